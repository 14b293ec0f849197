//! The Redis test harness itself: a server per test on its own port, killed and
//! restarted on the same port, with and without its data, and gone after drop.

use chat_tests::redis::{RedisServer, redis_or_skip};

#[test]
fn a_server_answers_restarts_on_its_port_and_dies_on_drop() {
    let Some(mut redis) = redis_or_skip("a_server_answers_restarts_on_its_port_and_dies_on_drop")
    else {
        return;
    };
    let port = redis.port();
    assert!(port < 32768, "ports are picked below the ephemeral range");
    assert_eq!(redis.command(&["PING"]).as_deref(), Some("PONG"));
    assert_eq!(redis.command(&["SET", "k", "v"]).as_deref(), Some("OK"));
    redis.kill();
    assert!(!redis.is_running());
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a killed server no longer listens"
    );
    redis.restart();
    assert_eq!(redis.port(), port);
    assert_eq!(
        redis.command(&["GET", "k"]),
        None,
        "a server without persistence comes back empty"
    );
    drop(redis);
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "a dropped server no longer listens"
    );
}

#[test]
fn a_persistent_server_keeps_what_it_acknowledged_across_sigkill() {
    if redis_or_skip("a_persistent_server_keeps_what_it_acknowledged_across_sigkill").is_none() {
        return;
    }
    let mut redis = RedisServer::start_persistent();
    assert_eq!(redis.command(&["INCR", "n"]).as_deref(), Some("1"));
    redis.kill();
    redis.restart();
    assert_eq!(redis.command(&["GET", "n"]).as_deref(), Some("1"));
}

#[test]
fn parallel_servers_get_ports_of_their_own() {
    if redis_or_skip("parallel_servers_get_ports_of_their_own").is_none() {
        return;
    }
    let servers: Vec<RedisServer> = (0..4).map(|_| RedisServer::start()).collect();
    for (i, server) in servers.iter().enumerate() {
        server.command(&["SET", "who", &i.to_string()]);
    }
    for (i, server) in servers.iter().enumerate() {
        assert_eq!(server.command(&["GET", "who"]), Some(i.to_string()));
    }
}
