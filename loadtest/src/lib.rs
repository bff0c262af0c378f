//! shardcast-loadtest: a load harness for any broker speaking the vws dialect (and gows
//! where a scenario allows), so shardcast and its peers are measured by the same tool.
//!
//! A run connects subscribers (few threads, many connections each), publishes stamped
//! messages at a fixed aggregate rate, and counts every delivery against what was
//! published: loss, duplicates, latency from an HDR histogram, the broker's CPU and
//! RSS from /proc, and the harness's own CPU so a reader can tell who was the limit.
//! The abuse scenario adds hostile clients of every kind (`abuse`) and checks that the
//! healthy ones noticed little and that the broker gave back what the attack cost.
//! The replay scenario (`replay`) measures history: a live fan-out that fills a history
//! channel, then late joiners replaying it. The ingest and backpressure scenarios
//! (`ingest`, `backpressure`) measure edges publishing with acks on the SemStreams data
//! channel, in vws or the SemStreams dialect, and what `semstreams.on_full` does to a
//! peer that pushes faster than it reads.

pub mod abuse;
pub mod backpressure;
pub mod brokerstats;
pub mod conn;
pub mod ingest;
pub mod plan;
pub mod plot;
pub mod procfs;
pub mod progress;
pub mod publishers;
pub mod replay;
pub mod report;
pub mod run;
pub mod subscribers;
pub mod summary;
pub mod tally;
pub mod wire;
