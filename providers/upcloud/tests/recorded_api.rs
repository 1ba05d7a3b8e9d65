//! The provider against recordings of the real UpCloud API
//! (tests/fixtures: cassettes recorded by UpCloud's Go SDK), replayed by
//! tests/replay in the order the provider must make its requests.
//!
//! Where a cassette's flow differs from the provider's, a test uses the
//! interactions the provider makes and names those it leaves out.

mod replay;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use drover_core::FailureKind;
use drover_core::model::{Resources, Server};
use drover_exec::runner::{Paths, Pool};
use drover_provider::{Provider, ProviderContext, Reach, Secrets, ServerStatus};
use drover_provider_upcloud::api::{ApiError, Client, Credentials};
use drover_provider_upcloud::records::{NetworkRecord, Records, ServerRecord};
use drover_provider_upcloud::{Poll, UpcloudProvider};
use replay::{Essential, Replay, Step, cassette};
use serde_json::{Value, json};

const USER: &str = "drover-test";
const PASSWORD: &str = "s3cret-pw-4711";
/// `Basic base64(USER:PASSWORD)`.
const BASIC: &str = "Basic ZHJvdmVyLXRlc3Q6czNjcmV0LXB3LTQ3MTE=";
const RUN: &str = "20261205-120000-abcd";
/// The template the recorded creates clone.
const TEMPLATE: &str = "01000000-0000-4000-8000-000020060100";
const ZONE: &str = "fi-hel2";

/// Hosts, networks and servers of the recordings.
const NET_HOST: &str = "uploud-go-sdk-integration-test-testcreatenetworkandserver.example.com";
const NET_SERVER: &str = "00b3806a-16f9-4ee3-bcb3-cbaca7461ddb";
const NET: &str = "037e40d7-399a-4575-a1af-b688836bff80";
const DEL_HOST: &str = "uploud-go-sdk-integration-test-testcreatedeleteserverandstorage.example.com";
const DEL_SERVER: &str = "005e48a7-dc8a-409e-be63-9fcc536f292e";
const SS_HOST: &str = "uploud-go-sdk-integration-test-createstartstopserver.example.com";
const SS_SERVER: &str = "002018a7-c0a2-498f-a823-40e7cf735e61";
const MOD_NET: &str = "038de4ca-f2dd-48b3-a383-a7483a04d714";

fn secrets_basic() -> Secrets {
    Secrets::new([
        ("UPCLOUD_USERNAME".to_string(), USER.to_string()),
        ("UPCLOUD_PASSWORD".to_string(), PASSWORD.to_string()),
    ])
}

fn ctx(dir: &Path, task: &str, secrets: Secrets) -> ProviderContext {
    let paths = Paths {
        data_dir: dir.join("data"),
        logs_dir: dir.join("logs"),
        base_dir: dir.to_path_buf(),
        keep_remote_dirs: false,
    };
    ProviderContext {
        state_dir: dir.join("data/providers/upcloud"),
        run_id: RUN.into(),
        idempotency_key: format!("{RUN}/{task}"),
        plan: Some(Resources {
            cpu: 1,
            memory: 1024,
            disk: 10,
        }),
        connector: Arc::new(Pool::new(&paths)),
        // Networks are made by the servers' own creates in these tests.
        zones: Vec::new(),
        secrets,
    }
}

fn provider(replay: &Replay) -> UpcloudProvider {
    UpcloudProvider::with_api(
        &replay.url(),
        TEMPLATE,
        Poll {
            first: Duration::from_millis(1),
            max: Duration::from_millis(4),
            limit: Duration::from_secs(20),
        },
    )
}

fn server(hostname: &str) -> Server {
    serde_json::from_value(json!({
        "hostname": hostname,
        "provider": "upcloud",
        "plan": "1xCPU-1GB",
        "zone": ZONE,
        "ssh": {"host_key_policy": "accept-new"},
    }))
    .expect("a server")
}

fn record_server(dir: &Path, hostname: &str, uuid: Option<&str>) {
    Records::new(&dir.join("data/providers/upcloud"), RUN)
        .save_server(&ServerRecord {
            hostname: hostname.into(),
            zone: ZONE.into(),
            idempotency_key: format!("{RUN}/create/{hostname}"),
            uuid: uuid.map(str::to_string),
        })
        .expect("record");
}

fn record_network(dir: &Path, uuid: Option<&str>) {
    Records::new(&dir.join("data/providers/upcloud"), RUN)
        .save_network(&NetworkRecord {
            zone: ZONE.into(),
            name: format!("drover-{RUN}-{ZONE}"),
            uuid: uuid.map(str::to_string),
        })
        .expect("record");
}

fn records(dir: &Path) -> Records {
    Records::new(&dir.join("data/providers/upcloud"), RUN)
}

/// The network of a request's private interface, wherever it is in the
/// list.
fn private_network(body: &Value) -> Option<Value> {
    body.pointer("/server/networking/interfaces/interface")?
        .as_array()?
        .iter()
        .find(|i| i["type"] == "private")
        .map(|i| i["network"].clone())
}

fn label_query(key: &str, value: &str) -> String {
    format!("{key}={value}")
}

#[tokio::test]
async fn create_makes_the_zone_network_then_the_server_and_waits_until_started() {
    let cns = cassette("createnetworkandserver");
    let gsf = cassette("getserverswithfilters");
    let by_host = label_query("drover-server", NET_HOST);
    let mut steps = vec![
        Step::new(&cns, 0).essential(vec![
            Essential::Same("/network/zone"),
            Essential::Same("/network/ip_networks/ip_network/0/family"),
            Essential::Same("/network/ip_networks/ip_network/0/dhcp"),
            Essential::Same("/network/ip_networks/ip_network/0/dhcp_default_route"),
        ]),
        // Before making a server: is there one of this name already? The
        // real service's answer to a label-filtered list (not drover's
        // servers) says no.
        Step::new(&gsf, 2).drover_query(&[("label", &by_host)]),
        Step::new(&cns, 1).essential(vec![
            Essential::Same("/server/zone"),
            Essential::Same("/server/hostname"),
            Essential::Same("/server/password_delivery"),
            Essential::Same("/server/storage_devices/storage_device/0/action"),
            Essential::Same("/server/storage_devices/storage_device/0/storage"),
            Essential::Same("/server/storage_devices/storage_device/0/size"),
            Essential::Same("/server/storage_devices/storage_device/0/tier"),
            Essential::Found("the private interface's network", private_network),
        ]),
    ];
    // Five answers "maintenance", the sixth "started".
    steps.extend((2..=7).map(|i| Step::new(&cns, i)));
    let replay = Replay::start(steps, BASIC).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = ctx(dir.path(), &format!("create/{NET_HOST}"), secrets_basic());

    let facts = provider(&replay).create(&server(NET_HOST), &ctx).await.expect("create");

    let requests = replay.requests();
    replay.finish();
    assert_eq!(facts.address, "94.237.106.28");
    assert_eq!(facts.root, "/");
    assert_eq!(facts.found["uuid"], NET_SERVER);
    assert_eq!(facts.found["zone"], ZONE);
    assert_eq!(facts.found["network"], NET);
    assert_eq!(facts.found["private_ipv4"], "172.16.0.2");
    assert_eq!(facts.found["state"], "started");
    let key_file = ctx.state_dir.join("id_ed25519");
    let Reach::Ssh(hints) = &facts.reach else {
        panic!("reached over SSH: {:?}", facts.reach)
    };
    assert_eq!(hints.user.as_deref(), Some("root"));
    assert_eq!(hints.key_file.as_deref(), Some(key_file.as_path()));

    // What drover asked for beyond the recorded fields: its plan, its key
    // for the login user, its labels.
    let create = &requests[2].body["server"];
    assert_eq!(create["plan"], "1xCPU-1GB");
    let public = std::fs::read_to_string(ctx.state_dir.join("id_ed25519.pub")).expect("public key");
    assert!(public.starts_with("ssh-ed25519 "), "{public}");
    assert_eq!(create["login_user"]["ssh_keys"]["ssh_key"][0], public.trim());
    let labels = create["labels"]["label"].as_array().expect("labels");
    assert!(
        labels.contains(&json!({"key": "drover-run", "value": RUN})),
        "{labels:?}"
    );
    assert!(
        labels.contains(&json!({"key": "drover-server", "value": NET_HOST})),
        "{labels:?}"
    );
    assert_eq!(requests[0].body["network"]["name"], format!("drover-{RUN}-{ZONE}"));

    // Recorded, so that a repeat finds them.
    let r = records(dir.path());
    assert_eq!(
        r.server(NET_HOST).expect("record").and_then(|s| s.uuid).as_deref(),
        Some(NET_SERVER)
    );
    assert_eq!(
        r.network(ZONE).expect("record").and_then(|n| n.uuid).as_deref(),
        Some(NET)
    );
}

#[tokio::test]
async fn a_repeated_create_reads_the_recorded_server_and_makes_nothing() {
    let cns = cassette("createnetworkandserver");
    // Only the last details (started): no network, no list, no create.
    let replay = Replay::start(vec![Step::new(&cns, 7)], BASIC).await;
    let dir = tempfile::tempdir().expect("tempdir");
    record_network(dir.path(), Some(NET));
    record_server(dir.path(), NET_HOST, Some(NET_SERVER));
    let ctx = ctx(dir.path(), &format!("create/{NET_HOST}"), secrets_basic());

    let facts = provider(&replay).create(&server(NET_HOST), &ctx).await.expect("create");

    replay.finish();
    assert_eq!(facts.address, "94.237.106.28");
    assert_eq!(facts.found["uuid"], NET_SERVER);
}

#[tokio::test]
async fn a_network_asked_for_before_a_crash_is_looked_for_before_one_is_made() {
    let cmdn = cassette("createmodifydeletenetwork");
    let cns = cassette("createnetworkandserver");
    let replay = Replay::start(
        vec![
            // The zone's networks (none named drover-<run>-fi-hel2)...
            Step::new(&cmdn, 10),
            // ...so it is made.
            Step::new(&cns, 0).essential(vec![Essential::Same("/network/zone")]),
        ],
        BASIC,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    record_network(dir.path(), None);
    let ctx = ctx(dir.path(), "create/network:upcloud", secrets_basic());
    let p = provider(&replay);
    let client = p.client(&ctx).expect("client");

    let uuid = p.ensure_network(&client, ZONE, &ctx).await.expect("network");

    replay.finish();
    assert_eq!(uuid, NET);
    assert_eq!(
        records(dir.path())
            .network(ZONE)
            .expect("record")
            .and_then(|n| n.uuid)
            .as_deref(),
        Some(NET)
    );
}

#[tokio::test]
async fn status_is_running_down_or_absent() {
    let cdss = cassette("createdeleteserverandstorage");
    let cssp = cassette("createstartstopserver");
    let gsf = cassette("getserverswithfilters");
    let absent = "not-made-yet";
    let replay = Replay::start(
        vec![
            Step::new(&cdss, 1),
            Step::new(&cssp, 3),
            Step::new(&gsf, 2).drover_query(&[("label", &label_query("drover-server", absent))]),
        ],
        BASIC,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    record_server(dir.path(), DEL_HOST, Some(DEL_SERVER));
    record_server(dir.path(), SS_HOST, Some(SS_SERVER));
    let ctx = ctx(dir.path(), "check", secrets_basic());
    let p = provider(&replay);

    let running = p.status(&server(DEL_HOST), &ctx).await.expect("status");
    let down = p.status(&server(SS_HOST), &ctx).await.expect("status");
    let gone = p.status(&server(absent), &ctx).await.expect("status");

    replay.finish();
    match running {
        ServerStatus::Running(facts) => {
            assert_eq!(facts.address, "94.237.9.189");
            assert_eq!(facts.found["uuid"], DEL_SERVER);
        }
        other => panic!("expected running, got {other:?}"),
    }
    match down {
        ServerStatus::Down(why) => assert!(why.contains(SS_SERVER) && why.contains("stopped"), "{why}"),
        other => panic!("expected down, got {other:?}"),
    }
    assert_eq!(gone, ServerStatus::Absent);
}

#[tokio::test]
async fn stop_is_hard_and_waits_until_stopped() {
    // createstartstopserver: details (started), stop (answers "started"),
    // details (stopped). Its create (#0) and start (#4) are not part of a
    // stop.
    let cssp = cassette("createstartstopserver");
    let replay = Replay::start(
        vec![
            Step::new(&cssp, 1),
            Step::new(&cssp, 2).essential(vec![Essential::Same("/stop_server/stop_type")]),
            Step::new(&cssp, 3),
        ],
        BASIC,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    record_server(dir.path(), SS_HOST, Some(SS_SERVER));
    let ctx = ctx(dir.path(), "delete", secrets_basic());
    let p = provider(&replay);
    let client = p.client(&ctx).expect("client");

    let found = p
        .find(&client, &server(SS_HOST), &ctx)
        .await
        .expect("find")
        .expect("recorded server");
    assert_eq!(found.state, "started");
    p.stop(&client, SS_HOST, &found).await.expect("stop");

    replay.finish();
}

#[tokio::test]
async fn delete_removes_the_server_with_its_storage() {
    // createdeleteserverandstorage#3: DELETE /server/{uuid}/?storages=1.
    // The provider's delete asks for it after the stop has been seen to
    // finish (stop_is_hard_and_waits_until_stopped); this recording has no
    // details between its stop (#2, answering "started") and the delete,
    // so the delete call itself is replayed here alone.
    let cdss = cassette("createdeleteserverandstorage");
    let replay = Replay::start(vec![Step::new(&cdss, 3)], BASIC).await;
    let client = Client::new(
        &replay.url(),
        Credentials::Basic {
            username: USER.into(),
            password: PASSWORD.into(),
        },
    )
    .expect("client");

    client.delete_server(DEL_SERVER).await.expect("delete");

    replay.finish();
}

#[tokio::test]
async fn deleting_a_server_that_is_not_there_asks_nothing_more() {
    let gsf = cassette("getserverswithfilters");
    let host = "never-made";
    let replay = Replay::start(
        vec![Step::new(&gsf, 2).drover_query(&[("label", &label_query("drover-server", host))])],
        BASIC,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = ctx(dir.path(), "rollback", secrets_basic());

    provider(&replay).delete(&server(host), &ctx).await.expect("delete");

    replay.finish();
}

#[tokio::test]
async fn create_starts_its_server_found_stopped() {
    let cssp = cassette("createstartstopserver");
    let replay = Replay::start(
        vec![
            Step::new(&cssp, 3),
            Step::new(&cssp, 4).essential(vec![Essential::Same("/server")]),
        ],
        BASIC,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    record_network(dir.path(), Some(NET));
    record_server(dir.path(), SS_HOST, Some(SS_SERVER));
    let ctx = ctx(dir.path(), &format!("create/{SS_HOST}"), secrets_basic());

    let facts = provider(&replay).create(&server(SS_HOST), &ctx).await.expect("create");

    replay.finish();
    assert_eq!(facts.address, "94.237.106.241");
    assert_eq!(facts.found["state"], "started");
}

#[tokio::test]
async fn delete_network_deletes_what_the_run_made() {
    let cmdn = cassette("createmodifydeletenetwork");
    let replay = Replay::start(vec![Step::new(&cmdn, 9)], BASIC).await;
    let dir = tempfile::tempdir().expect("tempdir");
    Records::new(&dir.path().join("data/providers/upcloud"), RUN)
        .save_network(&NetworkRecord {
            zone: ZONE.into(),
            name: format!("drover-{RUN}-{ZONE}"),
            uuid: Some(MOD_NET.into()),
        })
        .expect("record");
    let ctx = ctx(dir.path(), "create/network:upcloud", secrets_basic());

    provider(&replay).delete_network(&ctx).await.expect("delete network");

    replay.finish();
    assert!(records(dir.path()).networks().expect("records").is_empty());
}

#[tokio::test]
async fn delete_network_looks_for_a_network_asked_for_before_a_crash() {
    // The zone's networks, none of them drover-<run>-fi-hel2: nothing to
    // delete, and the record goes.
    let cmdn = cassette("createmodifydeletenetwork");
    let replay = Replay::start(vec![Step::new(&cmdn, 10)], BASIC).await;
    let dir = tempfile::tempdir().expect("tempdir");
    record_network(dir.path(), None);
    let ctx = ctx(dir.path(), "create/network:upcloud", secrets_basic());

    provider(&replay).delete_network(&ctx).await.expect("delete network");

    replay.finish();
    assert!(records(dir.path()).networks().expect("records").is_empty());
}

#[tokio::test]
async fn the_network_task_checks_the_credentials_with_a_token() {
    let gsf = cassette("getserverswithfilters");
    let replay = Replay::start(
        vec![Step::new(&gsf, 2).drover_query(&[("label", &label_query("drover-run", RUN))])],
        "Bearer ucat_test-token",
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secrets = Secrets::new([("UPCLOUD_TOKEN".to_string(), "ucat_test-token".to_string())]);
    let ctx = ctx(dir.path(), "create/network:upcloud", secrets);

    provider(&replay).create_network(&ctx).await.expect("create network");

    replay.finish();
}

#[tokio::test]
async fn an_error_answer_keeps_upcloud_code_and_message_and_no_credentials() {
    let eh = cassette("errorhandling");
    let replay = Replay::start(
        vec![Step::new(&eh, 0).essential(vec![Essential::Same("/server")])],
        BASIC,
    )
    .await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ctx = ctx(dir.path(), "create/x", secrets_basic());
    let p = provider(&replay);
    let client = p.client(&ctx).expect("client");

    let e = client.start_server("invalid").await.expect_err("an error answer");

    replay.finish();
    match &e {
        ApiError::Refused {
            status, code, message, ..
        } => {
            assert_eq!(*status, 400);
            assert_eq!(code, "SERVER_INVALID");
            assert_eq!(message, "The server UUID is invalid.");
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(e.kind(), FailureKind::Permanent);
    let pe = p.api_error(&e, "starting server x");
    assert_eq!(pe.kind, FailureKind::Permanent);
    let text = pe.to_string();
    assert!(
        text.contains("SERVER_INVALID")
            && text.contains("The server UUID is invalid.")
            && text.contains("POST /server/invalid/start"),
        "{text}"
    );
    assert!(
        !text.contains(PASSWORD) && !format!("{pe:?}").contains(PASSWORD),
        "{text}"
    );
    assert!(!format!("{client:?}").contains(PASSWORD));
}

#[tokio::test]
async fn no_answer_is_transient() {
    // A port that was just free: connecting is refused.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        l.local_addr().expect("addr")
    };
    let client = Client::new(&format!("http://{addr}/1.3"), Credentials::Token("t".into())).expect("client");

    let e = client.server(NET_SERVER).await.expect_err("refused");

    assert!(matches!(e, ApiError::Unreachable { .. }), "{e:?}");
    assert_eq!(e.kind(), FailureKind::Transient);
    assert!(e.to_string().contains(&format!("GET /server/{NET_SERVER}")), "{e}");
}

#[test]
fn preflight_wants_a_zone_and_a_way_to_trust_the_new_host_key() {
    let p = UpcloudProvider::new();
    assert!(p.preflight(&server("ok")).is_empty());

    let strict: Server = serde_json::from_value(json!({
        "hostname": "wuji-cp-0", "provider": "upcloud", "plan": "4xCPU-8GB",
    }))
    .expect("a server");
    let problems = p.preflight(&strict);
    assert_eq!(problems.len(), 2, "{problems:?}");
    assert!(
        problems[0].contains("wuji-cp-0") && problems[0].contains("zone"),
        "{problems:?}"
    );
    assert!(problems[1].contains("accept-new"), "{problems:?}");
}
