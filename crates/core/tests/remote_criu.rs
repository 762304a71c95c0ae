//! Interop with a real CRIU (4.1.1 here, so the V411 layout). Needs root, the
//! CRIU wrapper in .criu/bin and the lpw workload; skipped (passes) otherwise,
//! unless LP_REQUIRE_CRIU=1.
//!
//! (a) our RemotePages against `criu page-server --lazy-pages` serving a normal
//!     dump: every lazy page byte-identical to the images.
//! (b) our PageServer feeding `criu lazy-pages --page-server` + `criu restore
//!     --lazy-pages`: the restored workload verifies its memory.

mod remote_support;

use remote_support::criu::*;

#[test]
fn remote_pages_against_criu_page_server() {
    let Some(env) = CriuEnv::detect() else { return };
    let run = env.dump_lpw("a", &["dense", "--mib", "64"]);
    let fetched = run.fetch_all_via_criu_page_server(&env);
    assert!(fetched.pages > 0);
    eprintln!(
        "(a) fetched {} lazy pages of {} tasks from criu page-server in {:?}",
        fetched.pages, fetched.tasks, fetched.elapsed
    );
}

#[test]
fn criu_lazy_pages_restores_from_our_page_server() {
    let Some(env) = CriuEnv::detect() else { return };
    let run = env.dump_lpw("b", &["dense", "--mib", "64"]);
    let result = run.restore_via_our_page_server(&env);
    assert!(result.starts_with("ok"), "workload says: {result}");
    eprintln!("(b) restored workload says: {result}");
}

#[test]
fn our_engine_restores_from_our_page_server() {
    let Some(env) = CriuEnv::detect() else { return };
    let run = env.dump_lpw("c1", &["dense", "--mib", "64"]);
    let (verdict, summary) = run.restore_with_our_engine(&env, Peer::Ours);
    assert!(verdict.starts_with("ok"), "workload says: {verdict}");
    eprintln!("(c1) ours->ours: {verdict}\n{summary:?}");
}

#[test]
fn our_engine_restores_from_criu_page_server() {
    let Some(env) = CriuEnv::detect() else { return };
    let run = env.dump_lpw("c2", &["tree", "--mib", "32", "--children", "2"]);
    let (verdict, summary) = run.restore_with_our_engine(&env, Peer::Criu);
    assert!(verdict.starts_with("ok"), "workload says: {verdict}");
    eprintln!("(c2) criu page-server->ours: {verdict}\n{summary:?}");
}
