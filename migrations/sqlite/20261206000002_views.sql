-- Typed views: per kind, the fields people query, as columns, over the
-- live records (tombstones left out). They read `data`, the upstream
-- object as received, so they need no writes and change nothing stored;
-- a field missing from a payload, or of another JSON type than expected
-- (a number, a boolean, a string for timestamps), is NULL, never an error.
--
-- Timestamps stay the RFC 3339 text received (DS sends Paris time with its
-- offset, Google and Contentor UTC): compare them through `datetime(...)`,
-- which reads the offset, never as text. Booleans are 0/1.
--
-- A later migration that rebuilds `records` (create, copy, drop, rename)
-- must drop these views first and create them again after: renaming a
-- table fails while a view names a table that is missing ("error in view").

-- Démarches Simplifiées dossiers (`DossierFields` in
-- src/sources/demarches/query.graphql).
CREATE VIEW demarches_dossiers AS
SELECT
    tenant,
    source,
    CASE json_type(data, '$.number') WHEN 'integer'
        THEN json_extract(data, '$.number') END AS number,
    json_extract(data, '$.state') AS state,
    CASE json_type(data, '$.archived') WHEN 'true' THEN 1 WHEN 'false' THEN 0 END AS archived,
    CASE json_type(data, '$.dateDepot') WHEN 'text'
        THEN json_extract(data, '$.dateDepot') END AS date_depot,
    CASE json_type(data, '$.datePassageEnInstruction') WHEN 'text'
        THEN json_extract(data, '$.datePassageEnInstruction') END AS date_passage_en_instruction,
    CASE json_type(data, '$.dateTraitement') WHEN 'text'
        THEN json_extract(data, '$.dateTraitement') END AS date_traitement,
    CASE json_type(data, '$.dateDerniereModification') WHEN 'text'
        THEN json_extract(data, '$.dateDerniereModification') END AS date_derniere_modification,
    json_extract(data, '$.usager.email') AS usager_email,
    json_extract(data, '$.demandeur.__typename') AS demandeur_type,
    json_extract(data, '$.demandeur.nom') AS demandeur_nom,
    json_extract(data, '$.demandeur.prenom') AS demandeur_prenom,
    json_extract(data, '$.demandeur.siret') AS demandeur_siret
FROM records
WHERE kind = 'demarches' AND deleted = 0;

-- Google Calendar events (`events.list` items; `id` is the record's key,
-- the event's `id`: its index serves lookups). An all-day event has
-- `start.date`/`end.date` (`YYYY-MM-DD`, the end exclusive), a timed one
-- `start.dateTime`/`end.dateTime`.
CREATE VIEW calendar_events AS
SELECT
    tenant,
    source,
    id,
    json_extract(data, '$.status') AS status,
    json_extract(data, '$.summary') AS summary,
    CASE json_type(data, '$.start.dateTime') WHEN 'text'
        THEN json_extract(data, '$.start.dateTime') END AS start_date_time,
    CASE json_type(data, '$.start.date') WHEN 'text'
        THEN json_extract(data, '$.start.date') END AS start_date,
    CASE json_type(data, '$.end.dateTime') WHEN 'text'
        THEN json_extract(data, '$.end.dateTime') END AS end_date_time,
    CASE json_type(data, '$.end.date') WHEN 'text'
        THEN json_extract(data, '$.end.date') END AS end_date,
    CASE
        WHEN json_extract(data, '$.start.date') IS NOT NULL THEN 1
        WHEN json_extract(data, '$.start.dateTime') IS NOT NULL THEN 0
    END AS all_day,
    json_extract(data, '$.recurringEventId') AS recurring_event_id,
    json_extract(data, '$.organizer.email') AS organizer_email,
    CASE json_type(data, '$.updated') WHEN 'text'
        THEN json_extract(data, '$.updated') END AS updated
FROM records
WHERE kind = 'calendar' AND deleted = 0;

-- Contentor content requests.
CREATE VIEW content_requests AS
SELECT
    tenant,
    source,
    CASE json_type(data, '$.id') WHEN 'integer'
        THEN json_extract(data, '$.id') END AS id,
    json_extract(data, '$.state') AS state,
    json_extract(data, '$.language') AS language,
    CASE json_type(data, '$.created') WHEN 'text'
        THEN json_extract(data, '$.created') END AS created,
    CASE json_type(data, '$.completed') WHEN 'text'
        THEN json_extract(data, '$.completed') END AS completed,
    CASE json_type(data, '$.lastStateChange') WHEN 'text'
        THEN json_extract(data, '$.lastStateChange') END AS last_state_change
FROM records
WHERE kind = 'content' AND deleted = 0;
