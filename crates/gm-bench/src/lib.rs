//! gm-bench
