-- Typed views: per kind, the fields people query, as columns, over the
-- live records (tombstones left out). They read `data`, the upstream
-- object as received, so they need no writes and change nothing stored.
-- The same views as on SQLite (migrations/sqlite/), with Postgres types:
-- bigint, boolean, timestamptz, date.
--
-- A view must never fail on what an upstream sent: one bad value would
-- make every query of the view fail. So nothing is cast unless it has the
-- expected shape, and a field that is missing or malformed is NULL:
-- numbers must be JSON integers, booleans JSON booleans, timestamps
-- RFC 3339 with an offset (`synchro_timestamptz`), days `YYYY-MM-DD`
-- (`synchro_date`). Each check comes before its cast in a CASE branch or
-- an IF, never side by side in an AND, whose order Postgres does not
-- promise (and a filter on a view column may be evaluated on rows of
-- other kinds, before `kind = ...`).

-- An RFC 3339 timestamp with its offset (`2024-03-01T11:15:42+01:00`,
-- `2024-03-01T10:15:42.123Z`) as timestamptz; NULL for anything else,
-- including days that do not exist (2023-02-29), year 0000 and offsets
-- beyond ±15:59, which Postgres refuses. IMMUTABLE holds although a cast
-- to timestamptz is only STABLE: with the offset in the text and the
-- ISO 8601 order of fields, neither `TimeZone` nor `DateStyle` changes the
-- result; it lets an expression index serve a view column.
-- PL/pgSQL, not SQL: an inlined SQL function would extract the field
-- from `data` (a `json` parse) once per use of its argument, and calls
-- only built-in functions, so that no `search_path` can break it.
CREATE FUNCTION synchro_timestamptz(t text) RETURNS timestamptz
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
BEGIN
    IF t ~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,9})?(Z|[+-](0[0-9]|1[0-5]):[0-5][0-9])$'
       AND left(t, 4) <> '0000' THEN
        -- The day exists in its month: counted from the 1st, it stays there.
        IF extract(day FROM make_date(left(t, 4)::int, substr(t, 6, 2)::int, 1)
                            + (substr(t, 9, 2)::int - 1)) = substr(t, 9, 2)::int THEN
            RETURN t::timestamptz;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- A day `YYYY-MM-DD` as date; NULL for anything else (same checks).
CREATE FUNCTION synchro_date(t text) RETURNS date
    LANGUAGE plpgsql IMMUTABLE STRICT PARALLEL SAFE
    AS $$
BEGIN
    IF t ~ '^[0-9]{4}-(0[1-9]|1[0-2])-(0[1-9]|[12][0-9]|3[01])$' AND left(t, 4) <> '0000' THEN
        IF extract(day FROM make_date(left(t, 4)::int, substr(t, 6, 2)::int, 1)
                            + (substr(t, 9, 2)::int - 1)) = substr(t, 9, 2)::int THEN
            RETURN t::date;
        END IF;
    END IF;
    RETURN NULL;
END
$$;

-- Démarches Simplifiées dossiers (`DossierFields` in
-- src/sources/demarches/query.graphql).
CREATE VIEW demarches_dossiers AS
SELECT
    tenant,
    source,
    CASE WHEN json_typeof(data -> 'number') = 'number'
              AND data ->> 'number' ~ '^-?[0-9]{1,18}$'
        THEN (data ->> 'number')::bigint END AS number,
    data ->> 'state' AS state,
    CASE WHEN json_typeof(data -> 'archived') = 'boolean'
        THEN (data ->> 'archived')::boolean END AS archived,
    synchro_timestamptz(data ->> 'dateDepot') AS date_depot,
    synchro_timestamptz(data ->> 'datePassageEnInstruction') AS date_passage_en_instruction,
    synchro_timestamptz(data ->> 'dateTraitement') AS date_traitement,
    synchro_timestamptz(data ->> 'dateDerniereModification') AS date_derniere_modification,
    data -> 'usager' ->> 'email' AS usager_email,
    data -> 'demandeur' ->> '__typename' AS demandeur_type,
    data -> 'demandeur' ->> 'nom' AS demandeur_nom,
    data -> 'demandeur' ->> 'prenom' AS demandeur_prenom,
    data -> 'demandeur' ->> 'siret' AS demandeur_siret
FROM records
WHERE kind = 'demarches' AND NOT deleted;

-- Google Calendar events (`events.list` items; `id` is the record's key,
-- the event's `id`: its index serves lookups). An all-day event has
-- `start.date`/`end.date` (the end exclusive), a timed one
-- `start.dateTime`/`end.dateTime`.
CREATE VIEW calendar_events AS
SELECT
    tenant,
    source,
    id,
    data ->> 'status' AS status,
    data ->> 'summary' AS summary,
    synchro_timestamptz(data -> 'start' ->> 'dateTime') AS start_date_time,
    synchro_date(data -> 'start' ->> 'date') AS start_date,
    synchro_timestamptz(data -> 'end' ->> 'dateTime') AS end_date_time,
    synchro_date(data -> 'end' ->> 'date') AS end_date,
    CASE
        WHEN data -> 'start' ->> 'date' IS NOT NULL THEN true
        WHEN data -> 'start' ->> 'dateTime' IS NOT NULL THEN false
    END AS all_day,
    data ->> 'recurringEventId' AS recurring_event_id,
    data -> 'organizer' ->> 'email' AS organizer_email,
    synchro_timestamptz(data ->> 'updated') AS updated
FROM records
WHERE kind = 'calendar' AND NOT deleted;

-- Contentor content requests.
CREATE VIEW content_requests AS
SELECT
    tenant,
    source,
    CASE WHEN json_typeof(data -> 'id') = 'number'
              AND data ->> 'id' ~ '^-?[0-9]{1,18}$'
        THEN (data ->> 'id')::bigint END AS id,
    data ->> 'state' AS state,
    data ->> 'language' AS language,
    synchro_timestamptz(data ->> 'created') AS created,
    synchro_timestamptz(data ->> 'completed') AS completed,
    synchro_timestamptz(data ->> 'lastStateChange') AS last_state_change
FROM records
WHERE kind = 'content' AND NOT deleted;
