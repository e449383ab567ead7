//! Times cluster starts: `cargo run -p pg-harness --example start_timing [15|17] [N]`.
//! The first start of a fresh machine includes the one-time template initdb.
//! `N = 0` starts one cluster, prints its directory and sleeps 60 s (to test the clean-up
//! of clusters left by killed processes).
use pg_harness::{Binaries, Cluster};
use std::time::Instant;

fn main() {
    let mut args = std::env::args().skip(1);
    let major = args.next().unwrap_or_else(|| "15".into());
    let n: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(5);
    let bin = match major.as_str() {
        "17" => Binaries::pg17(),
        _ => Binaries::pg15(),
    }
    .unwrap();
    if n == 0 {
        let c = Cluster::start(&bin).unwrap();
        println!("{}", c.dir().display());
        std::thread::sleep(std::time::Duration::from_secs(60));
        return;
    }
    for i in 0..n {
        let t = Instant::now();
        let c = Cluster::start(&bin).unwrap();
        let started = t.elapsed();
        c.psql("postgres", "select 1").unwrap();
        let t2 = Instant::now();
        c.stop();
        println!(
            "pg{} start #{i}: {:?} (stop + remove: {:?})",
            bin.major(),
            started,
            t2.elapsed()
        );
    }
}
