//! The runner of the live test files (`harness = false` in Cargo.toml, through
//! libtest-mimic): one throw-away cluster for the binary ([`main2`]: two independent ones,
//! started side by side), then each suite as a test. Without Ceph (not installed, or the
//! cluster does not start) every suite is reported as **ignored**, with the reason on stderr;
//! with `RBDDIFF_REQUIRE_CEPH=1` (CI) each fails instead. A `#[test]` function in such a file
//! would not run: add suites to the list given to [`main`].

use std::sync::Arc;

use libtest_mimic::{Arguments, Failed, Trial};

use super::ceph::{ceph_required, Cluster};

/// A live suite: a name and the function run with the cluster.
pub type Suite = (&'static str, fn(Arc<Cluster>));

/// A live suite of two clusters: a name and the function run with both (the primary first).
pub type Suite2 = (&'static str, fn(Arc<Cluster>, Arc<Cluster>));

/// Runs `suites` against one cluster and exits with the result.
pub fn main(suites: &[Suite]) -> ! {
    let args = Arguments::from_args();
    // No cluster is started just to list the tests.
    let cluster = if args.list {
        Err("listing only".to_string())
    } else {
        Cluster::try_start().map(Arc::new)
    };
    run(args, cluster, suites, |suite, c| suite(c))
}

/// Runs `suites` against one cluster that also runs an S3 gateway
/// ([`Cluster::start_gateway`]), and exits with the result. Without radosgw the suites are
/// ignored, or fail under `RBDDIFF_REQUIRE_CEPH=1`, as without Ceph.
pub fn main_gateway(suites: &[Suite]) -> ! {
    let args = Arguments::from_args();
    let cluster = if args.list {
        Err("listing only".to_string())
    } else {
        Cluster::try_start().and_then(|mut c| {
            c.start_gateway()?;
            Ok(Arc::new(c))
        })
    };
    run(args, cluster, suites, |suite, c| suite(c))
}

/// Runs `suites` against two independent clusters (their own ports, fsids and state), started
/// side by side, and exits with the result.
pub fn main2(suites: &[Suite2]) -> ! {
    let args = Arguments::from_args();
    let clusters = if args.list {
        Err("listing only".to_string())
    } else {
        let other = std::thread::spawn(Cluster::try_start);
        let a = Cluster::try_start();
        let b = other
            .join()
            .unwrap_or_else(|_| Err("the second cluster's start panicked".to_string()));
        match (a, b) {
            (Ok(a), Ok(b)) => Ok((Arc::new(a), Arc::new(b))),
            (Err(e), _) | (_, Err(e)) => Err(e),
        }
    };
    run(args, clusters, suites, |suite, (a, b)| suite(a, b))
}

fn run<C: Clone + Send + 'static, S: Copy + Send + 'static>(
    args: Arguments,
    cluster: Result<C, String>,
    suites: &[(&'static str, S)],
    call: fn(S, C),
) -> ! {
    if let Err(why) = &cluster {
        if !args.list {
            eprintln!(
                "note: live Ceph tests {}: {why}",
                if ceph_required() {
                    "fail (RBDDIFF_REQUIRE_CEPH=1)"
                } else {
                    "ignored (set RBDDIFF_REQUIRE_CEPH=1 to make this an error)"
                }
            );
        }
    }
    let trials = suites
        .iter()
        .map(|&(name, suite)| match &cluster {
            Ok(c) => {
                let c = c.clone();
                Trial::test(name, move || {
                    call(suite, c);
                    Ok(())
                })
            }
            Err(why) => {
                let why = why.clone();
                let required = ceph_required();
                Trial::test(name, move || {
                    Err(Failed::from(format!("needs Ceph: {why}")))
                })
                .with_ignored_flag(!required)
            }
        })
        .collect();
    let conclusion = libtest_mimic::run(&args, trials);
    // The trials are done with the cluster: stop it before exiting.
    drop(cluster);
    conclusion.exit()
}
