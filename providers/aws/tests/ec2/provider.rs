//! The provider through the `Provider` trait against moto (the AWS EC2
//! API emulator) in server mode: the run's network, servers across two
//! zones, idempotent creates, deletion of servers and network, permanent
//! failures, and throttling retried within the rate limit.

use std::time::{Duration, Instant};

use anyhow::Result;
use drover_core::FailureKind;
use drover_provider::{Provider, Reach, ServerStatus};
use drover_provider_aws::{API_RATE_LIMIT, AwsProvider};

use crate::common::*;

const ZONES: [&str; 2] = ["us-east-1a", "us-east-1b"];

fn five_servers() -> Vec<drover_core::model::Server> {
    (0..5)
        .map(|i| server(&format!("node-{i}"), "t3.micro", ZONES[i % 2]))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_servers_in_two_zones_then_everything_deleted() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path(), &[])?;
    let ec2 = moto.ec2();
    let aws = AwsProvider::with_endpoint(&moto.url);
    let state = dir.path().join("state");
    let run = "run-five";
    let secrets = secrets("AKIAFAKEFAKEFAKE0001", Some(IMAGE));

    aws.create_network(&network_ctx(&state, run, &ZONES, secrets.clone()))
        .await?;
    // The network task again (a resume): nothing new.
    aws.create_network(&network_ctx(&state, run, &ZONES, secrets.clone()))
        .await?;
    let (vpcs, mut subnet_zones, groups) = run_network(&ec2, run).await?;
    subnet_zones.sort();
    assert_eq!((vpcs.len(), groups.len()), (1, 1), "one VPC and one security group");
    assert_eq!(subnet_zones, ZONES, "a subnet in each zone of the run's servers");

    let servers = five_servers();
    let creates = servers.iter().map(|s| {
        let c = ctx(&state, run, &format!("create/{}", s.hostname), secrets.clone());
        let aws = aws.clone();
        async move { aws.create(s, &c).await }
    });
    let facts = futures_util::future::try_join_all(creates).await?;
    for (s, f) in servers.iter().zip(&facts) {
        assert_eq!(f.found.get("zone").map(String::as_str), s.zone.as_deref(), "{f:?}");
        assert_eq!(f.found.get("instance_type").map(String::as_str), Some("t3.micro"));
        assert!(f.found["instance_id"].starts_with("i-"), "{f:?}");
        assert!(!f.address.is_empty());
        let Reach::Ssh(hints) = &f.reach else {
            panic!("EC2 servers are reached over SSH: {f:?}")
        };
        assert_eq!(hints.user.as_deref(), Some("admin"));
        assert_eq!(hints.key_file.as_deref(), Some(state.join("id_ed25519").as_path()));
    }
    let live = live_instances(&ec2).await?;
    let expected: Vec<(String, String, String)> = servers
        .iter()
        .map(|s| {
            (
                s.hostname.clone(),
                s.zone.clone().unwrap_or_default(),
                "running".to_string(),
            )
        })
        .collect();
    assert_eq!(live, expected);
    let (_, mut subnet_zones, _) = run_network(&ec2, run).await?;
    subnet_zones.sort();
    assert_eq!(subnet_zones, ZONES, "no subnet made twice");

    // Each create again (a retry, a resume): the same instance, none new.
    for (s, f) in servers.iter().zip(&facts) {
        let again = aws
            .create(s, &ctx(&state, run, &format!("create/{}", s.hostname), secrets.clone()))
            .await?;
        assert_eq!(again.found["instance_id"], f.found["instance_id"]);
    }
    assert_eq!(live_instances(&ec2).await?.len(), 5);

    let status = aws
        .status(&servers[0], &ctx(&state, run, "check/node-0", secrets.clone()))
        .await?;
    match status {
        ServerStatus::Running(f) => assert_eq!(f.found["instance_id"], facts[0].found["instance_id"]),
        other => panic!("node-0 should be running: {other:?}"),
    }

    // The network deletion while servers exist leaves the network (the
    // network task undone last deletes it).
    aws.delete_network(&network_ctx(&state, run, &ZONES, secrets.clone()))
        .await?;
    assert_eq!(
        run_network(&ec2, run).await?.0.len(),
        1,
        "the VPC stays while instances use it"
    );

    for s in &servers {
        aws.delete(s, &ctx(&state, run, &format!("create/{}", s.hostname), secrets.clone()))
            .await?;
    }
    assert_eq!(live_instances(&ec2).await?, vec![]);
    assert_eq!(
        aws.status(&servers[0], &ctx(&state, run, "check/node-0", secrets.clone()))
            .await?,
        ServerStatus::Absent
    );
    // A delete of a server that is gone succeeds.
    aws.delete(&servers[0], &ctx(&state, run, "create/node-0", secrets.clone()))
        .await?;

    aws.delete_network(&network_ctx(&state, run, &ZONES, secrets.clone()))
        .await?;
    assert_eq!(run_network(&ec2, run).await?, (vec![], vec![], vec![]));
    let gateways = ec2
        .describe_internet_gateways()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("tag:drover:run")
                .values(run)
                .build(),
        )
        .send()
        .await?;
    assert!(gateways.internet_gateways().is_empty(), "{gateways:?}");
    // And again: nothing to delete is not an error.
    aws.delete_network(&network_ctx(&state, run, &ZONES, secrets.clone()))
        .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_create_finds_the_instance_an_earlier_attempt_made() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path(), &[])?;
    let ec2 = moto.ec2();
    let state = dir.path().join("state");
    let secrets = secrets("AKIAFAKEFAKEFAKE0002", Some(IMAGE));
    let s = server("solo", "t3.small", "us-east-1a");
    let c = ctx(&state, "run-again", "create/solo", secrets);
    let first = AwsProvider::with_endpoint(&moto.url).create(&s, &c).await?;
    // A new process (nothing cached) repeats the call.
    let second = AwsProvider::with_endpoint(&moto.url).create(&s, &c).await?;
    assert_eq!(first.found["instance_id"], second.found["instance_id"]);
    assert_eq!(live_instances(&ec2).await?.len(), 1);
    let (vpcs, subnets, _) = run_network(&ec2, "run-again").await?;
    assert_eq!(
        (vpcs.len(), subnets.len()),
        (1, 1),
        "the network was found, not made again"
    );
    Ok(())
}

/// Each failure is permanent (another attempt cannot help), comes at once
/// (the failing call, when there is one, was made once: not retried) and
/// carries AWS's code and message.
async fn fails_at_once(
    aws: &AwsProvider,
    proxy: &ThrottlingProxy,
    failing: Option<&str>,
    s: &drover_core::model::Server,
    c: &drover_provider::ProviderContext,
) -> drover_provider::ProviderError {
    let before = failing.map(|f| proxy.calls(f));
    let start = Instant::now();
    let e = aws.create(s, c).await.expect_err("the create fails");
    assert_eq!(e.kind, FailureKind::Permanent, "{e}");
    if let (Some(f), Some(before)) = (failing, before) {
        assert_eq!(proxy.calls(f) - before, 1, "{f} was called once: {e}");
    }
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "took {:?}: {e}",
        start.elapsed()
    );
    e
}

/// moto loads its EC2 backend on the first call (seconds): done before
/// timing anything.
async fn warm_up(moto: &Moto) {
    let _ = moto.ec2().describe_regions().send().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_image_and_instance_type_fail_at_once_with_aws_message() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path(), &[])?;
    warm_up(&moto).await;
    let proxy = ThrottlingProxy::start(&moto.url, 0).await?;
    let aws = AwsProvider::with_endpoint(&proxy.url);
    let state = dir.path().join("state");

    let s = server("web-0", "t3.micro", "us-east-1a");
    let e = fails_at_once(
        &aws,
        &proxy,
        Some("DescribeImages"),
        &s,
        &ctx(
            &state,
            "run-bad",
            "create/web-0",
            secrets("AKIAFAKE03", Some("ami-12345678")),
        ),
    )
    .await;
    let text = e.to_string();
    assert!(
        text.contains("server web-0") && text.contains("InvalidAMIID.NotFound"),
        "{text}"
    );
    assert!(text.contains("ami-12345678"), "AWS's message names the image: {text}");

    let s = server("web-1", "t3.gigantic", "us-east-1a");
    let e = fails_at_once(
        &aws,
        &proxy,
        Some("RunInstances"),
        &s,
        &ctx(&state, "run-bad", "create/web-1", secrets("AKIAFAKE03", Some(IMAGE))),
    )
    .await;
    let text = e.to_string();
    assert!(
        text.contains("RunInstances") && text.contains("InvalidInstanceType"),
        "{text}"
    );
    assert!(text.contains("t3.gigantic"), "{text}");

    // No image given and no Debian AMI in the region (moto has none).
    let s = server("web-2", "t3.micro", "us-east-1a");
    let e = fails_at_once(
        &aws,
        &proxy,
        Some("DescribeImages"),
        &s,
        &ctx(&state, "run-bad", "create/web-2", secrets("AKIAFAKE03", None)),
    )
    .await;
    assert!(e.to_string().contains("no Debian 12 AMI"), "{e}");

    // A zone of another region.
    let s = server("web-3", "t3.micro", "eu-central-1a");
    let e = fails_at_once(
        &aws,
        &proxy,
        None,
        &s,
        &ctx(&state, "run-bad", "create/web-3", secrets("AKIAFAKE03", Some(IMAGE))),
    )
    .await;
    assert!(
        e.to_string().contains("not an availability zone of region us-east-1"),
        "{e}"
    );
    assert_eq!(proxy.calls("RunInstances"), 1, "only web-1's RunInstances was made");
    assert!(live_instances(&moto.ec2()).await?.is_empty());

    let e = aws
        .create_network(&network_ctx(
            &state,
            "run-elsewhere",
            &["us-east-1a", "eu-central-1a"],
            secrets("AKIAFAKE03", Some(IMAGE)),
        ))
        .await
        .expect_err("a network in a zone of another region fails");
    assert_eq!(e.kind, FailureKind::Permanent, "{e}");
    assert!(
        e.to_string().contains("zone eu-central-1a is not an availability zone"),
        "{e}"
    );
    assert_eq!(
        run_network(&moto.ec2(), "run-elsewhere").await?,
        (vec![], vec![], vec![]),
        "nothing was made"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_credentials_fail_at_once_and_are_not_shown() -> Result<()> {
    let dir = tempfile::tempdir()?;
    // moto checks credentials against its IAM users from the first call.
    let moto = Moto::start(dir.path(), &[("INITIAL_NO_AUTH_ACTION_COUNT", "0")])?;
    warm_up(&moto).await;
    let proxy = ThrottlingProxy::start(&moto.url, 0).await?;
    let aws = AwsProvider::with_endpoint(&proxy.url);
    let state = dir.path().join("state");
    let key = "AKIANOSUCHKEY0000042";
    let c = ctx(&state, "run-auth", "create/web-0", secrets(key, Some(IMAGE)));
    // The first call of a create is the key pair's.
    let e = fails_at_once(
        &aws,
        &proxy,
        Some("DescribeKeyPairs"),
        &server("web-0", "t3.micro", "us-east-1a"),
        &c,
    )
    .await;
    let text = e.to_string();
    assert!(
        text.contains("AuthFailure") || text.contains("InvalidClientTokenId") || text.contains("UnrecognizedClient"),
        "{text}"
    );
    assert!(
        !text.contains(key) && !text.contains("fake-secret-key-of-the-run"),
        "no credential in the message: {text}"
    );
    let e = aws.create_network(&c).await.expect_err("the network fails too");
    assert_eq!(e.kind, FailureKind::Permanent, "{e}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_within_the_rate_limit() -> Result<()> {
    let dir = tempfile::tempdir()?;
    let moto = Moto::start(dir.path(), &[])?;
    let proxy = ThrottlingProxy::start(&moto.url, 4).await?;
    let aws = AwsProvider::with_endpoint(&proxy.url);
    let state = dir.path().join("state");
    let run = "run-throttled";
    let secrets = secrets("AKIAFAKE05", Some(IMAGE));
    let servers: Vec<_> = (0..3)
        .map(|i| server(&format!("t-{i}"), "t3.nano", ZONES[i % 2]))
        .collect();
    let creates = servers.iter().map(|s| {
        let c = ctx(&state, run, &format!("create/{}", s.hostname), secrets.clone());
        let aws = aws.clone();
        async move { aws.create(s, &c).await }
    });
    futures_util::future::try_join_all(creates).await?;
    let throttled = proxy.throttled.load(std::sync::atomic::Ordering::SeqCst);
    assert_eq!(throttled, 4, "the first 4 RunInstances calls were throttled");
    assert_eq!(
        proxy.run_instances_forwarded.load(std::sync::atomic::Ordering::SeqCst),
        3,
        "one RunInstances per server reached EC2"
    );
    assert_eq!(live_instances(&moto.ec2()).await?.len(), 3);

    // At most API_RATE_LIMIT calls started in any second, retries included.
    let arrivals: Vec<Instant> = proxy
        .arrivals
        .lock()
        .expect("arrivals")
        .iter()
        .map(|(t, _)| *t)
        .collect();
    assert!(arrivals.len() > 10, "{} calls", arrivals.len());
    let most = arrivals
        .iter()
        .map(|t| {
            arrivals
                .iter()
                .filter(|u| **u >= *t && **u < *t + Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap_or(0);
    assert!(
        most as f64 <= API_RATE_LIMIT + 1.0,
        "{most} calls within one second; the limit is {API_RATE_LIMIT}/s"
    );
    Ok(())
}
