//! `ssh hub 'cmd'` through every route: stdout, stderr and the exit code come back intact, and
//! stdin reaches the command with its EOF.

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::scenarios;

fn exec_round_trip(backend: Backend, route: Route) {
    let env = Env::new();
    let _server = env.start(backend, route, &[]);
    scenarios::exec_round_trip(&env);
}

#[test]
fn embedded_exec_through_hubssh_proxy() {
    exec_round_trip(Backend::Embedded, Route::Hubssh);
}

#[test]
fn embedded_exec_through_raw_unix_socket() {
    exec_round_trip(Backend::Embedded, Route::Raw);
}

#[test]
fn embedded_exec_through_websocat() {
    exec_round_trip(Backend::Embedded, Route::Websocat);
}

#[test]
fn openssh_exec_through_hubssh_proxy() {
    exec_round_trip(Backend::OpenSsh, Route::Hubssh);
}

#[test]
fn openssh_exec_through_raw_unix_socket() {
    exec_round_trip(Backend::OpenSsh, Route::Raw);
}

#[test]
fn openssh_exec_through_websocat() {
    exec_round_trip(Backend::OpenSsh, Route::Websocat);
}

#[test]
fn embedded_exec_through_hubssh_proxy_on_a_socket() {
    exec_round_trip(Backend::Embedded, Route::HubsshOnSocket);
}
