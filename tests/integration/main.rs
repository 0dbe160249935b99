//! synchro's integration tests, in one binary: each test binary links the
//! whole dependency graph, so one binary instead of eleven keeps a clean
//! build small and its link time short. Every test starts its own simulator
//! on 127.0.0.1:0 and its own `synchro` processes in a temporary folder, so
//! the modules run side by side without sharing state.

mod common;

mod calendar_sync;
mod content_sync;
mod crash_safety;
mod daemon;
mod demarches_sync;
mod deploy;
mod examples;
mod fault_suite;
mod feed;
mod hostile;
mod leases;
mod listener;
mod observability;
mod operator;
mod reload;
mod replicas;
mod scale;
mod untrusted;
mod views;
