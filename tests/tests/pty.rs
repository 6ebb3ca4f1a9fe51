//! An interactive session on a real pty, driven by tmux: the prompt appears, typed commands run,
//! the window size arrives and follows a resize, Ctrl-C stops the foreground job only, and
//! `exit 3` becomes ssh's exit code.

use hubssh_tests::client::{Backend, Env, Route};
use hubssh_tests::scenarios;

fn interactive(backend: Backend, route: Route) {
    let env = Env::new();
    let _server = env.start(backend, route, &[]);
    scenarios::interactive(&env);
}

#[test]
fn embedded_interactive_pty() {
    interactive(Backend::Embedded, Route::Hubssh);
}

#[test]
fn openssh_interactive_pty() {
    interactive(Backend::OpenSsh, Route::Hubssh);
}
