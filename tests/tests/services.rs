//! Service dependencies and the dependency registry, end to end with a real Docker engine.
//! No image can be pulled here, so the sidecar is a Redis server built locally from Debian's
//! redis-server package (once, cached by a tag that hashes its Dockerfile) and named with
//! `services.redis.image`; the main image gets the real `redis-cli` from the registry's
//! `redis-cli` tool entry.

use moat_e2e::{Moat, docker_out, docker_ready, host_service};
use std::process::{Command, Stdio};

/// Redis from bookworm; the entrypoint also starts a second, password-less Redis on port
/// 7777, which the run's firewall must keep the main container away from.
const REDIS_DOCKERFILE: &str = "FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends redis-server >/dev/null && rm -rf /var/lib/apt/lists/*
COPY entry.sh /entry.sh
ENTRYPOINT [\"sh\", \"/entry.sh\"]
CMD [\"redis-server\"]
";
const REDIS_ENTRY: &str =
    "redis-server --port 7777 --bind 0.0.0.0 --protected-mode no --daemonize yes >/dev/null
exec \"$@\"
";

/// PostgreSQL 15 from bookworm, initialised the way the official image is: from
/// POSTGRES_USER and POSTGRES_PASSWORD, password authentication over the network.
const POSTGRES_DOCKERFILE: &str = "FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends postgresql-15 >/dev/null && rm -rf /var/lib/apt/lists/*
COPY entry.sh /entry.sh
CMD [\"sh\", \"/entry.sh\"]
";
const POSTGRES_ENTRY: &str = r#"set -eu
export PATH=/usr/lib/postgresql/15/bin:$PATH
D=/var/lib/postgresql/moat
mkdir -p "$D" && chown postgres "$D"
printf '%s' "$POSTGRES_PASSWORD" > /tmp/pw && chown postgres /tmp/pw
su postgres -s /bin/sh -c "initdb -D $D -U $POSTGRES_USER --pwfile=/tmp/pw -A scram-sha-256" >/dev/null
rm -f /tmp/pw
echo "host all all 0.0.0.0/0 scram-sha-256" >> "$D/pg_hba.conf"
exec su postgres -s /bin/sh -c "exec postgres -D $D -c listen_addresses='*' -k /tmp"
"#;

/// MariaDB from bookworm standing in for MySQL, initialised the way the official MySQL
/// image is: root's password from MYSQL_ROOT_PASSWORD, the database MYSQL_DATABASE, root
/// allowed over the network. It listens only once that is done.
const MYSQL_DOCKERFILE: &str = "FROM debian:bookworm-slim
RUN apt-get update -qq && apt-get install -y -qq --no-install-recommends mariadb-server >/dev/null && rm -rf /var/lib/apt/lists/*
COPY entry.sh /entry.sh
CMD [\"sh\", \"/entry.sh\"]
";
const MYSQL_ENTRY: &str = r#"set -eu
mkdir -p /run/mysqld && chown mysql /run/mysqld
mariadbd --user=mysql --skip-networking --socket=/tmp/init.sock >/dev/null 2>&1 &
i=0
until mariadb -S /tmp/init.sock -e 'select 1' >/dev/null 2>&1; do
  i=$((i+1)); [ $i -lt 300 ] || exit 1; sleep 0.1
done
mariadb -S /tmp/init.sock <<SQL
ALTER USER root@localhost IDENTIFIED BY '$MYSQL_ROOT_PASSWORD';
CREATE USER root@'%' IDENTIFIED BY '$MYSQL_ROOT_PASSWORD';
GRANT ALL ON *.* TO root@'%' WITH GRANT OPTION;
CREATE DATABASE \`$MYSQL_DATABASE\`;
SQL
mariadb-admin -S /tmp/init.sock -uroot -p"$MYSQL_ROOT_PASSWORD" shutdown
exec mariadbd --user=mysql --bind-address=0.0.0.0
"#;

/// The Redis sidecar image, built from Debian packages the first time.
fn redis_image() -> String {
    local_image(
        "redis-sidecar",
        &[("Dockerfile", REDIS_DOCKERFILE), ("entry.sh", REDIS_ENTRY)],
    )
}

/// The postgres stand-in image the sidecar tests use (built once, from local files).
fn postgres_image() -> String {
    local_image(
        "postgres-sidecar",
        &[
            ("Dockerfile", POSTGRES_DOCKERFILE),
            ("entry.sh", POSTGRES_ENTRY),
        ],
    )
}

/// An image built from `files` (a Dockerfile and what it copies), tagged by their hash, so
/// it is built once per machine.
fn local_image(name: &str, files: &[(&str, &str)]) -> String {
    let all: String = files.iter().map(|(n, t)| format!("{n}\n{t}\n")).collect();
    let h = moat_core::hex(&sha256(all.as_bytes()))[..12].to_string();
    let tag = format!("moat-e2e/{name}:{h}");
    let have = Command::new("docker")
        .args(["image", "inspect", &tag])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !have {
        let dir = tempfile::tempdir().unwrap();
        for (n, t) in files {
            std::fs::write(dir.path().join(n), t).unwrap();
        }
        let mut c = Command::new("docker");
        c.args(["build", "-q", "--label", "moat.test=services", "-t", &tag])
            .arg(dir.path());
        let r = moat_e2e::run_with_deadline(c, format!("docker build {name}"), None, 300);
        assert_eq!(r.code(), 0, "building {tag}: {}", r.stderr());
    }
    tag
}

fn sha256(b: &[u8]) -> Vec<u8> {
    let out = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b)?;
            c.wait_with_output()
        })
        .unwrap();
    let hex = String::from_utf8_lossy(&out.stdout);
    let hex = hex.split_whitespace().next().unwrap();
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

/// Containers labelled with the run (its main container and its sidecars).
fn containers_of(id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-a",
            "-q",
            "--filter",
            &format!("label=moat.run={id}"),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(String::from)
        .collect()
}

/// Wait (bounded) until nothing labelled with the run is left.
fn wait_gone(id: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !containers_of(id).is_empty() && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert!(
        containers_of(id).is_empty(),
        "left behind: {:?}",
        containers_of(id)
    );
}

fn sidecar_cmd(id: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "inspect",
            "--format",
            "{{json .Config.Cmd}}",
            &format!("moat-{id}-redis"),
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "no redis sidecar for {id}");
    serde_json::from_slice(&out.stdout).unwrap()
}

fn rm_sidecar(id: &str) {
    let _ = Command::new("docker")
        .args(["rm", "-f", &format!("moat-{id}-redis")])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

const SCRIPT: &str = r#"
cli() { redis-cli -h "$MOAT_REDIS_HOST" -p "$MOAT_REDIS_PORT" --no-auth-warning "$@" 2>&1; }
me() { cli --user "$MOAT_REDIS_USER" --pass "$MOAT_REDIS_PASSWORD" "$@"; }
echo "SET=$(me SET moatkey value-from-the-run)"
echo "GET=$(me GET moatkey)"
echo "URLGET=$(redis-cli -u "$MOAT_REDIS_URL" --no-auth-warning GET moatkey 2>&1)"
echo "CONFIG=$(me CONFIG SET dir /tmp)"
echo "REPLICA=$(me REPLICAOF 192.0.2.1 6379)"
echo "ACL=$(me ACL SETUSER default on nopass)"
echo "RESTORE=$(me RESTORE otherkey 0 payload)"
echo "MIGRATE=$(me MIGRATE 127.0.0.1 7777 moatkey 0 1000)"
echo "WRONG=$(cli -a wrong-password-xyz GET moatkey)"
echo "NONE=$(cli GET moatkey)"
echo "PWSUM=$(printf %s "$MOAT_REDIS_PASSWORD" | sha256sum | cut -c1-64)"
echo "USER=$MOAT_REDIS_USER"
echo "URLHOST=${MOAT_REDIS_URL##*@}"
if timeout 3 bash -c "exec 3<>/dev/tcp/$MOAT_REDIS_HOST/7777" 2>/dev/null; then echo OTHERPORT-OPEN; else echo OTHERPORT-CLOSED; fi
echo DONE
for i in $(seq 1 600); do [ -f /workspace/go ] && break; sleep 0.1; done
"#;

#[test]
fn a_redis_sidecar_answers_only_to_the_runs_generated_account() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let image = redis_image();
    m.write_config(&format!(
            "name: svc\ndependencies:\n  - redis@7\n  - redis-cli\nservices:\n  redis:\n    image: {image}\n"
        ));
    let r = m.run_timeout(
        "moat-launch",
        &["run", "--no-sandbox", "-d", "--", "bash", "-c", SCRIPT],
        None,
        600,
    );
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let id = r.stdout().trim().to_string();
    m.wait_log(&id, "DONE", 120);

    // The password the sidecar was started with: 32 random letters and digits.
    let cmd = sidecar_cmd(&id);
    let i = cmd.iter().position(|a| a == "--requirepass").unwrap();
    let pw = cmd[i + 1].clone();
    assert_eq!(pw.len(), 32, "{pw}");
    assert!(pw.chars().all(|c| c.is_ascii_alphanumeric()));
    assert_eq!(m.metadata(&id)["services"], serde_json::json!(["redis"]));
    assert_eq!(
        containers_of(&id).len(),
        4,
        "main container, its guard, sidecar and its guard"
    );

    let logs = m.launch(&["logs", &id]).stdout();
    // A real query through the injected variables works...
    assert!(logs.contains("SET=OK"), "{logs}");
    assert!(logs.contains("GET=value-from-the-run"), "{logs}");
    assert!(logs.contains("URLHOST=redis:6379"), "{logs}");
    assert!(logs.contains("URLGET=value-from-the-run"), "{logs}");
    // The run's account is not the administrator: no CONFIG, REPLICAOF, ACL, RESTORE or
    // MIGRATE (THREATS L5).
    assert!(logs.contains("USER=moat_agent"), "{logs}");
    for k in ["CONFIG=", "REPLICA=", "ACL=", "RESTORE=", "MIGRATE="] {
        let l = logs.lines().find(|l| l.starts_with(k)).unwrap();
        assert!(l.contains("NOPERM"), "{logs}");
    }
    // ...and the same query without it, or with another password, is refused.
    let wrong = logs.lines().find(|l| l.starts_with("WRONG=")).unwrap();
    assert!(wrong.contains("WRONGPASS"), "{logs}");
    assert!(!wrong.contains("value-from-the-run"), "{logs}");
    assert!(logs.contains("NONE=NOAUTH"), "{logs}");
    // The administrator's password (the sidecar's --requirepass) is not the run's.
    let sum = moat_core::hex(&sha256(pw.as_bytes()));
    assert!(logs.contains("PWSUM="), "{logs}");
    assert!(!logs.contains(&format!("PWSUM={sum}")), "{logs}");
    // The firewall opens the sidecar's port, not the sidecar: its other listener (which
    // answers inside the sidecar) is out of reach.
    assert!(logs.contains("OTHERPORT-CLOSED"), "{logs}");
    let other = Command::new("docker")
        .args([
            "exec",
            &format!("moat-{id}-redis"),
            "redis-cli",
            "-p",
            "7777",
            "ping",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&other.stdout).trim(), "PONG");

    // The run ends: its sidecar goes with it.
    std::fs::write(m.ws.join("go"), "").unwrap();
    m.wait_state(&id, &["stopped", "failed"], 60);
    wait_gone(&id);
    assert_eq!(m.metadata(&id)["state"], "stopped");

    // Another run gets another password.
    let r2 = m.run_timeout(
        "moat-launch",
        &[
            "run",
            "--no-sandbox",
            "-d",
            "--",
            "sh",
            "-c",
            "echo READY; sleep 60",
        ],
        None,
        300,
    );
    assert_eq!(r2.code(), 0, "{}", r2.stderr());
    let id2 = r2.stdout().trim().to_string();
    m.wait_log(&id2, "READY", 60);
    let cmd2 = sidecar_cmd(&id2);
    let pw2 = cmd2[cmd2.iter().position(|a| a == "--requirepass").unwrap() + 1].clone();
    assert_ne!(pw, pw2);

    // A supervisor killed outright: reconciliation (any command) removes the sidecar too.
    let sup = m.metadata(&id2)["supervisor_pid"].as_u64().unwrap();
    let k = Command::new("kill")
        .args(["-9", &sup.to_string()])
        .status()
        .unwrap();
    assert!(k.success());
    std::thread::sleep(std::time::Duration::from_millis(300));
    let l = m.launch(&["list"]);
    assert_eq!(l.code(), 0, "{}", l.stderr());
    assert!(containers_of(&id2).is_empty(), "{:?}", containers_of(&id2));
    rm_sidecar(&id2);

    // destroy removes the run; nothing of either password is anywhere under MOAT_HOME.
    let d = m.launch(&["destroy", &id]);
    assert_eq!(d.code(), 0, "{}", d.stderr());
    for p in [&pw, &pw2] {
        let found = m.env.files_containing(p.as_bytes());
        assert!(found.is_empty(), "the password is in {found:?}");
    }
    let meta = std::fs::read_to_string(m.moat_home().join("runs").join(&id2).join("metadata.json"))
        .unwrap();
    assert!(!meta.contains(&pw2));
    let audit = m.launch(&["logs", &id2]);
    assert!(!audit.stdout().contains(&pw2));
}

#[test]
fn the_registry_is_listed_and_unknown_dependencies_are_refused() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let l = m.run_timeout("moat", &["deps", "list"], None, 60);
    assert_eq!(l.code(), 0, "{}", l.stderr());
    let out = l.stdout();
    assert!(out.starts_with("KIND"), "{out}");
    for want in [
        "runtime",
        "node",
        "18,20,22",
        "3.10,3.11,3.12",
        "postgres",
        "16,17",
        "mysql",
        "redis",
        "docker:host",
        "docker:dind",
        "language_server",
        "MOAT_POSTGRES_*",
    ] {
        assert!(out.contains(want), "{want}: {out}");
    }
    let j = m.launch(&["deps", "list", "--json"]);
    assert_eq!(j.code(), 0);
    let recs = j.records();
    assert_eq!(recs.len(), out.lines().count() - 1, "one record per row");
    assert!(recs.iter().all(|r| r.kind == "dependency"));
    let redis = recs
        .iter()
        .find(|r| r.str("name") == Some("redis"))
        .unwrap();
    assert_eq!(redis.str("kind"), Some("service"));
    assert_eq!(redis.get("service").unwrap()["port"], 6379);

    let i = m.launch(&["deps", "info", "postgres"]);
    assert_eq!(i.code(), 0, "{}", i.stderr());
    for want in [
        "postgres:{version}",
        "5432",
        "MOAT_POSTGRES_URL",
        "MOAT_POSTGRES_PASSWORD",
        "MOAT_POSTGRES_DB",
        "pg_isready",
        "moat_agent",
    ] {
        assert!(i.stdout().contains(want), "{want}: {}", i.stdout());
    }
    let ij = m.launch(&["deps", "info", "redis", "--json"]);
    assert_eq!(ij.records().len(), 1);
    let bad = m.launch(&["deps", "info", "postgress"]);
    assert_eq!(bad.code(), 64, "{}", bad.stderr());
    assert!(bad.stderr().contains("postgres@16"), "{}", bad.stderr());

    // In moat.yaml: the file, the line and the close matches; exit 78; no run is created.
    m.write_config("name: x\ndependencies:\n  - node@20\n  - postgress@17\n");
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 78, "{}", r.stderr());
    let e = r.stderr();
    assert!(e.contains("moat.yaml:4"), "{e}");
    assert!(e.contains("postgres@17"), "{e}");
    m.write_config("dependencies: [node@19]\n");
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(r.stderr().contains("18, 20, 22"), "{}", r.stderr());
    // services: for a service that is not a dependency.
    m.write_config("dependencies: [redis@7]\nservices:\n  postgres:\n    wait: false\n");
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 78, "{}", r.stderr());
    assert!(r.stderr().contains("moat.yaml:3"), "{}", r.stderr());
    assert!(r.stderr().contains("redis"), "{}", r.stderr());
    assert!(m.run_ids().is_empty());
}

#[test]
fn a_service_image_that_is_missing_fails_clearly_and_leaves_nothing() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    m.write_config("dependencies: [postgres@17]\nservices:\n  postgres:\n    image: moat-e2e/no-such-image:1\n");
    let r = m.launch(&["run", "--no-sandbox", "--", "true"]);
    assert_eq!(r.code(), 69, "{}", r.stderr());
    let e = r.stderr();
    assert!(e.contains("moat-e2e/no-such-image:1"), "{e}");
    assert!(e.contains("services.postgres.image"), "{e}");
    let id = m.run_ids().pop().unwrap();
    assert_eq!(m.metadata(&id)["state"], "failed");
    assert!(containers_of(&id).is_empty());
}

#[test]
fn a_postgres_sidecar_is_waited_for_and_answers_psql_with_the_injected_url() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let image = postgres_image();
    m.write_config(&format!(
        "dependencies: [postgres@17, psql]\nservices:\n  postgres:\n    image: {image}\n"
    ));
    // No retry loop: the first query only works if the run waited for pg_isready.
    let script = r#"
echo "ANSWER=$(psql "$MOAT_POSTGRES_URL" -qtAc 'create table t (v text); insert into t values ($$from-the-run$$); select v from t' 2>&1)"
echo "SPLIT=$(PGPASSWORD="$MOAT_POSTGRES_PASSWORD" psql -h "$MOAT_POSTGRES_HOST" -p "$MOAT_POSTGRES_PORT" -U "$MOAT_POSTGRES_USER" -d "$MOAT_POSTGRES_DB" -tAc 'select count(*) from t' 2>&1)"
echo "WRONG=$(PGPASSWORD=not-the-password psql -h "$MOAT_POSTGRES_HOST" -U "$MOAT_POSTGRES_USER" -d "$MOAT_POSTGRES_DB" -tAc 'select 1' 2>&1)"
echo "PWLEN=${#MOAT_POSTGRES_PASSWORD}"
"#;
    let r = m.sh(script);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("ANSWER=from-the-run"), "{out}\n{}", r.stderr());
    assert!(out.contains("SPLIT=1"), "{out}");
    let wrong = out.lines().find(|l| l.starts_with("WRONG=")).unwrap();
    assert!(wrong.contains("password authentication failed"), "{out}");
    assert!(out.contains("PWLEN=32"), "{out}");
    assert!(r.stderr().contains("postgres is ready"), "{}", r.stderr());
    // The run is recorded as ended before Docker's clean-up; the sidecar goes right after.
    wait_gone(&m.run_ids().pop().unwrap());
}

#[test]
fn a_mysql_sidecar_is_waited_for_and_answers_the_mysql_client_with_the_injected_credentials() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let image = local_image(
        "mysql-sidecar",
        &[("Dockerfile", MYSQL_DOCKERFILE), ("entry.sh", MYSQL_ENTRY)],
    );
    m.write_config(&format!(
        "dependencies: [mysql@8, mysql-client]\nservices:\n  mysql:\n    image: {image}\n"
    ));
    // No retry loop: the first query only works if the run waited for mysqladmin ping.
    let script = r#"
q() { mysql -h "$MOAT_MYSQL_HOST" -P "$MOAT_MYSQL_PORT" -u "$MOAT_MYSQL_USER" -p"$1" "$MOAT_MYSQL_DB" -N -B -e "$2" 2>&1; }
echo "ANSWER=$(q "$MOAT_MYSQL_PASSWORD" 'create table t (v text); insert into t values ("from-the-run"); select v from t')"
echo "WRONG=$(q not-the-password 'select 1')"
echo "URL=$MOAT_MYSQL_URL"
echo "PWLEN=${#MOAT_MYSQL_PASSWORD}"
echo "OUTFILE=$(q "$MOAT_MYSQL_PASSWORD" "select 'x' into outfile '/tmp/moat-outfile'" | tr '\n' ' ')"
echo "GRANTS=$(q "$MOAT_MYSQL_PASSWORD" 'show grants' | tr '\n' ' ')"
"#;
    let r = m.sh(script);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("ANSWER=from-the-run"), "{out}\n{}", r.stderr());
    let wrong = out.lines().find(|l| l.starts_with("WRONG=")).unwrap();
    assert!(wrong.contains("Access denied"), "{out}");
    // The run's account has its database and no server privilege (FILE, SUPER, ...).
    assert!(
        out.contains("URL=mysql://moat_agent:") && out.contains("@mysql:3306/moat"),
        "{out}"
    );
    let outfile = out.lines().find(|l| l.starts_with("OUTFILE=")).unwrap();
    assert!(outfile.contains("Access denied"), "{out}");
    let grants = out.lines().find(|l| l.starts_with("GRANTS=")).unwrap();
    assert!(grants.contains("ON `moat`.*"), "{out}");
    // On the server as a whole: USAGE (log in), nothing more.
    assert!(grants.contains("GRANT USAGE ON *.*"), "{out}");
    assert_eq!(grants.matches(" ON *.*").count(), 1, "{out}");
    assert!(
        !grants.contains("FILE") && !grants.contains("SUPER"),
        "{out}"
    );
    assert!(out.contains("PWLEN=32"), "{out}");
    assert!(r.stderr().contains("mysql is ready"), "{}", r.stderr());
    wait_gone(&m.run_ids().pop().unwrap());
}

#[test]
fn docker_host_gives_the_run_the_hosts_engine_and_says_so() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    m.write_config("dependencies: [docker:host]\n");
    m.trust(None);
    let r = m.sh("docker version --format 'SERVER={{.Server.Version}}'");
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    let host = Command::new("docker")
        .args(["version", "--format", "{{.Server.Version}}"])
        .output()
        .unwrap();
    let host = String::from_utf8_lossy(&host.stdout).trim().to_string();
    // The command (without a capability left) reaches the host's engine through the socket.
    assert!(out.contains(&format!("SERVER={host}")), "{out}");
    assert!(
        r.stderr().contains("WARNING: docker:host"),
        "{}",
        r.stderr()
    );
}

/// THREATS L5 (and E2 for sidecars): the postgres sidecar as a pivot. The run's account is
/// not a superuser: `COPY ... FROM PROGRAM` (a shell in the sidecar) is refused and it cannot
/// make itself one, yet it owns its database. The administrator's password is not in the
/// run's container. From inside the sidecar (root, `docker exec`), nothing answers: not a
/// host service on 0.0.0.0 (docker0, the run network's gateway, the host's addresses), not
/// the run's proxy, not an address outside. On a sidecar with no firewall and superuser
/// credentials, the program runs and the service hands out its canary.
#[test]
fn a_postgres_sidecar_is_no_pivot() {
    if !docker_ready() {
        return;
    }
    let nonce = moat_core::hex(&moat_core::random_bytes::<6>());
    let canary = format!("CANARY-{nonce}");
    let (port, hits) = host_service(&canary);
    let m = Moat::new();
    let image = postgres_image();
    m.write_config(&format!(
        "dependencies: [postgres@17, psql]\nservices:\n  postgres:\n    image: {image}\n"
    ));
    let script = r#"
q() { psql "$MOAT_POSTGRES_URL" -XqtAc "$1" 2>&1 | tr '\n' ' '; }
echo "OWN=$(q 'create table t (v text); insert into t values ($$mine$$); select v from t')"
echo "PROGRAM=$(q "copy t from program 'echo pwned > /tmp/pwned; echo x'")"
echo "SUPER=$(q 'alter role current_user superuser')"
echo "GRANT=$(q 'grant pg_execute_server_program to current_user')"
echo "ISSUPER=$(q 'select rolsuper from pg_roles where rolname = current_user')"
echo "WHO=$MOAT_POSTGRES_USER"
echo DONE
for i in $(seq 1 600); do [ -f /workspace/go ] && break; sleep 0.1; done
"#;
    let r = m.run_timeout(
        "moat-launch",
        &["run", "--no-sandbox", "-d", "--", "bash", "-c", script],
        None,
        600,
    );
    assert_eq!(r.code(), 0, "{}\n{}", r.stdout(), r.stderr());
    let id = r.stdout().trim().to_string();
    m.wait_log(&id, "DONE", 180);
    let logs = m.launch(&["logs", &id]).stdout();
    let line = |k: &str| {
        logs.lines()
            .find(|l| l.contains(&format!("{k}=")))
            .unwrap_or_default()
            .to_string()
    };
    assert!(line("OWN").contains("mine"), "{logs}");
    let program = line("PROGRAM");
    assert!(
        program.contains("ERROR") && program.contains("pg_execute_server_program"),
        "{logs}"
    );
    assert!(line("SUPER").contains("ERROR"), "{logs}");
    assert!(line("GRANT").contains("ERROR"), "{logs}");
    assert!(line("ISSUPER").contains("ISSUPER=f"), "{logs}");
    assert!(line("WHO").contains("WHO=moat_agent"), "{logs}");
    let sidecar = format!("moat-{id}-postgres");
    let pwned = Command::new("docker")
        .args(["exec", &sidecar, "test", "-e", "/tmp/pwned"])
        .status()
        .unwrap();
    assert!(!pwned.success(), "COPY FROM PROGRAM ran in the sidecar");

    // The administrator's password stays out of the run's container.
    let side_env = docker_out(&["inspect", "--format", "{{json .Config.Env}}", &sidecar]);
    let admin: Vec<String> = serde_json::from_str(&side_env).unwrap();
    let admin = admin
        .iter()
        .find_map(|e| e.strip_prefix("POSTGRES_PASSWORD="))
        .unwrap()
        .to_string();
    assert_eq!(admin.len(), 32);
    let main_env = docker_out(&[
        "inspect",
        "--format",
        "{{json .Config.Env}}",
        &format!("moat-{id}"),
    ]);
    assert!(main_env.contains("MOAT_POSTGRES_PASSWORD="), "{main_env}");
    assert!(
        !main_env.contains(&admin),
        "the administrator's password is in the run"
    );

    // It shares its guard's namespace, without the capabilities to change its rules or to
    // send around them.
    let host_cfg = docker_out(&[
        "inspect",
        "--format",
        "{{.HostConfig.NetworkMode}} {{json .HostConfig.CapDrop}} {{json .HostConfig.CapAdd}}",
        &sidecar,
    ]);
    let guard = docker_out(&[
        "inspect",
        "--format",
        "{{.Id}}",
        &format!("{sidecar}-guard"),
    ]);
    assert_eq!(
        host_cfg.trim(),
        format!(
            "container:{} [\"NET_RAW\",\"NET_ADMIN\"] null",
            guard.trim()
        ),
    );

    // From inside the sidecar, as root: nothing answers.
    let proxy = m.metadata(&id)["proxy_addr"].as_str().unwrap().to_string();
    let (gw, pport) = proxy.rsplit_once(':').unwrap();
    let mut targets = vec![
        format!("172.17.0.1 {port}"),
        format!("{gw} {port}"),
        format!("{gw} {pport}"),
        "1.1.1.1 443".to_string(),
    ];
    let hostname = Command::new("hostname").arg("-I").output().unwrap();
    for a in String::from_utf8_lossy(&hostname.stdout)
        .split_whitespace()
        .filter(|a| !a.contains(':'))
    {
        targets.push(format!("{a} {port}"));
    }
    let probe = format!(
        r#"probe() {{ if timeout 3 bash -c "exec 3<>/dev/tcp/$1/$2; head -c 64 <&3" 2>/dev/null; then echo " OPEN $1:$2"; else echo "CLOSED $1:$2"; fi; }}
{}
if timeout 3 getent hosts example.com >/dev/null 2>&1; then echo DNS-OPEN; else echo DNS-CLOSED; fi
"#,
        targets
            .iter()
            .map(|t| format!("probe {t} &"))
            .collect::<Vec<_>>()
            .join("\n")
            + "\nwait"
    );
    let out = docker_out(&["exec", &sidecar, "bash", "-c", &probe]);
    assert_eq!(out.matches("CLOSED ").count(), targets.len(), "{out}");
    assert!(!out.contains(" OPEN "), "reached from the sidecar: {out}");
    assert!(!out.contains(&canary), "{out}");
    assert!(out.contains("DNS-CLOSED"), "{out}");
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the host service was reached from the sidecar"
    );

    std::fs::write(m.ws.join("go"), "").unwrap();
    m.wait_state(&id, &["stopped", "failed"], 60);
    wait_gone(&id);
    assert!(m.env.files_containing(admin.as_bytes()).is_empty());
    assert!(m.env.files_containing(canary.as_bytes()).is_empty());
}

/// `wait: false` starts the command at once; the run's account is made in the background as
/// soon as the server answers, so the command's retries end with that account (never the
/// administrator's).
#[test]
fn without_waiting_the_runs_postgres_account_still_arrives() {
    if !docker_ready() {
        return;
    }
    let m = Moat::new();
    let image = postgres_image();
    m.write_config(&format!(
            "dependencies: [postgres@17, psql]\nservices:\n  postgres:\n    image: {image}\n    wait: false\n"
        ));
    let script = r#"
for i in $(seq 1 240); do
  a=$(psql "$MOAT_POSTGRES_URL" -XqtAc 'select current_user, rolsuper from pg_roles where rolname = current_user' 2>/dev/null) && break
  sleep 0.25
done
echo "ANSWER=$a"
"#;
    let r = m.sh(script);
    let out = r.stdout();
    assert_eq!(r.code(), 0, "{out}\n{}", r.stderr());
    assert!(out.contains("ANSWER=moat_agent|f"), "{out}\n{}", r.stderr());
    assert!(!r.stderr().contains("postgres is ready"), "{}", r.stderr());
    wait_gone(&m.run_ids().pop().unwrap());
}
