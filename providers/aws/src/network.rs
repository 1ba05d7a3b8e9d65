//! The run's network: a VPC (10.0.0.0/16), its internet gateway and a
//! default route in the VPC's main route table (instances get public
//! addresses, which is how the orchestrator reaches them), a security
//! group allowing SSH, and one subnet per availability zone (10.0.N.0/24,
//! public addresses on launch), made when the first server of that zone
//! is created.
//!
//! Everything carries the tag `drover:run=<run id>` and is found again by
//! it, so each step is idempotent: a network task re-run after a crash
//! finishes what the crashed attempt started.

use std::time::Duration;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, Filter, InstanceStateName, IpPermission, IpRange, ResourceType, Tag, TagSpecification,
};
use drover_core::FailureKind;

use crate::api::{Api, ApiError, failure};

/// The tag naming the run a resource was made for.
pub const RUN_TAG: &str = "drover:run";

/// The VPC CIDR block; subnets are /24s of it.
const VPC_CIDR: &str = "10.0.0.0/16";

/// The network of one run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub vpc_id: String,
    pub security_group_id: String,
}

pub fn filter(name: &str, value: &str) -> Filter {
    Filter::builder().name(name).values(value).build()
}

pub fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn tags(kind: ResourceType, run_id: &str, name: &str) -> TagSpecification {
    TagSpecification::builder()
        .resource_type(kind)
        .tags(tag(RUN_TAG, run_id))
        .tags(tag("Name", name))
        .build()
}

/// The security group's name in the VPC.
fn group_name(run_id: &str) -> String {
    format!("drover-{}", safe(run_id))
}

/// `s` with only the characters EC2 names and descriptions accept.
fn safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect()
}

/// The run's VPC, if made.
pub async fn find_vpc(api: &Api, run_id: &str) -> Result<Option<String>, ApiError> {
    let out = api
        .call("DescribeVpcs", |c| {
            c.describe_vpcs()
                .filters(filter(&format!("tag:{RUN_TAG}"), run_id))
                .send()
        })
        .await?;
    Ok(out.vpcs().iter().find_map(|v| v.vpc_id().map(str::to_string)))
}

/// Find or make the run's VPC, gateway, route and security group.
pub async fn ensure(api: &Api, run_id: &str) -> Result<Network, ApiError> {
    let name = format!("drover-{}", safe(run_id));
    let vpc_id = match find_vpc(api, run_id).await? {
        Some(id) => id,
        None => {
            let out = api
                .call("CreateVpc", |c| {
                    c.create_vpc()
                        .cidr_block(VPC_CIDR)
                        .tag_specifications(tags(ResourceType::Vpc, run_id, &name))
                        .send()
                })
                .await?;
            out.vpc()
                .and_then(|v| v.vpc_id())
                .map(str::to_string)
                .ok_or_else(|| missing("CreateVpc", "a VPC id"))?
        }
    };

    // The internet gateway, attached.
    let gateways = api
        .call("DescribeInternetGateways", |c| {
            c.describe_internet_gateways()
                .filters(filter(&format!("tag:{RUN_TAG}"), run_id))
                .send()
        })
        .await?;
    let (igw_id, attached) = match gateways.internet_gateways().first() {
        Some(g) => (
            g.internet_gateway_id().unwrap_or_default().to_string(),
            g.attachments().iter().any(|a| a.vpc_id() == Some(vpc_id.as_str())),
        ),
        None => {
            let out = api
                .call("CreateInternetGateway", |c| {
                    c.create_internet_gateway()
                        .tag_specifications(tags(ResourceType::InternetGateway, run_id, &name))
                        .send()
                })
                .await?;
            let id = out
                .internet_gateway()
                .and_then(|g| g.internet_gateway_id())
                .map(str::to_string)
                .ok_or_else(|| missing("CreateInternetGateway", "a gateway id"))?;
            (id, false)
        }
    };
    if !attached {
        match api
            .call("AttachInternetGateway", |c| {
                c.attach_internet_gateway()
                    .internet_gateway_id(&igw_id)
                    .vpc_id(&vpc_id)
                    .send()
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is("Resource.AlreadyAssociated") => {}
            Err(e) => return Err(e),
        }
    }

    // The default route, in the VPC's main route table (deleted with
    // the VPC, so there is no table of ours to delete).
    let tables = api
        .call("DescribeRouteTables", |c| {
            c.describe_route_tables()
                .filters(filter("vpc-id", &vpc_id))
                .filters(filter("association.main", "true"))
                .send()
        })
        .await?;
    let table = tables
        .route_tables()
        .first()
        .ok_or_else(|| missing("DescribeRouteTables", &format!("the main route table of {vpc_id}")))?;
    let routed = table
        .routes()
        .iter()
        .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0"));
    if !routed {
        let table_id = table.route_table_id().unwrap_or_default().to_string();
        match api
            .call("CreateRoute", |c| {
                c.create_route()
                    .route_table_id(&table_id)
                    .destination_cidr_block("0.0.0.0/0")
                    .gateway_id(&igw_id)
                    .send()
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is("RouteAlreadyExists") => {}
            Err(e) => return Err(e),
        }
    }

    // The security group: SSH from anywhere. The orchestrator's public
    // address cannot be known from inside its own network (NAT), and
    // the instances accept only the provider's key.
    let group = group_name(run_id);
    let groups = api
        .call("DescribeSecurityGroups", |c| {
            c.describe_security_groups()
                .filters(filter("vpc-id", &vpc_id))
                .filters(filter("group-name", &group))
                .send()
        })
        .await?;
    let (group_id, has_ssh) = match groups.security_groups().first() {
        Some(g) => (
            g.group_id().unwrap_or_default().to_string(),
            g.ip_permissions().iter().any(|p| p.from_port() == Some(22)),
        ),
        None => {
            let out = api
                .call("CreateSecurityGroup", |c| {
                    c.create_security_group()
                        .group_name(&group)
                        .description(format!("drover run {}: SSH", safe(run_id)))
                        .vpc_id(&vpc_id)
                        .tag_specifications(tags(ResourceType::SecurityGroup, run_id, &group))
                        .send()
                })
                .await?;
            let id = out
                .group_id()
                .map(str::to_string)
                .ok_or_else(|| missing("CreateSecurityGroup", "a group id"))?;
            (id, false)
        }
    };
    if !has_ssh {
        let ssh = IpPermission::builder()
            .ip_protocol("tcp")
            .from_port(22)
            .to_port(22)
            .ip_ranges(
                IpRange::builder()
                    .cidr_ip("0.0.0.0/0")
                    .description("drover SSH")
                    .build(),
            )
            .build();
        match api
            .call("AuthorizeSecurityGroupIngress", |c| {
                c.authorize_security_group_ingress()
                    .group_id(&group_id)
                    .ip_permissions(ssh.clone())
                    .send()
            })
            .await
        {
            Ok(_) => {}
            Err(e) if e.is("InvalidPermission.Duplicate") => {}
            Err(e) => return Err(e),
        }
    }
    Ok(Network {
        vpc_id,
        security_group_id: group_id,
    })
}

/// Find or make the subnet of `zone` in the run's VPC.
pub async fn ensure_subnet(api: &Api, run_id: &str, network: &Network, zone: &str) -> Result<String, ApiError> {
    let subnets = api
        .call("DescribeSubnets", |c| {
            c.describe_subnets().filters(filter("vpc-id", &network.vpc_id)).send()
        })
        .await?;
    if let Some(id) = subnets
        .subnets()
        .iter()
        .find(|s| s.availability_zone() == Some(zone))
        .and_then(|s| s.subnet_id())
    {
        return Ok(id.to_string());
    }
    let used: Vec<u8> = subnets
        .subnets()
        .iter()
        .filter_map(|s| s.cidr_block()?.split('.').nth(2)?.parse().ok())
        .collect();
    let n = (1..=255u8).find(|n| !used.contains(n)).ok_or_else(|| {
        failure(
            FailureKind::Permanent,
            format!("VPC {} has no free /24 left for a subnet in {zone}", network.vpc_id),
        )
    })?;
    let name = format!("drover-{}-{zone}", safe(run_id));
    let out = api
        .call("CreateSubnet", |c| {
            c.create_subnet()
                .vpc_id(&network.vpc_id)
                .availability_zone(zone)
                .cidr_block(format!("10.0.{n}.0/24"))
                .tag_specifications(tags(ResourceType::Subnet, run_id, &name))
                .send()
        })
        .await?;
    let id = out
        .subnet()
        .and_then(|s| s.subnet_id())
        .map(str::to_string)
        .ok_or_else(|| missing("CreateSubnet", "a subnet id"))?;
    api.call("ModifySubnetAttribute", |c| {
        c.modify_subnet_attribute()
            .subnet_id(&id)
            .map_public_ip_on_launch(AttributeBooleanValue::builder().value(true).build())
            .send()
    })
    .await?;
    Ok(id)
}

/// What deleting the run's network did.
#[derive(Debug, PartialEq, Eq)]
pub enum Deleted {
    /// There was none (never made, or deleted before).
    Nothing,
    /// Deleted.
    Network(String),
    /// Left in place: these instances of the run still use it; the
    /// deletion of the network task undone last (after every server)
    /// deletes it.
    InUse(Vec<String>),
}

/// Delete the run's network: security group, subnets, gateway, VPC.
pub async fn delete(api: &Api, run_id: &str) -> Result<Deleted, ApiError> {
    let Some(vpc_id) = find_vpc(api, run_id).await? else {
        return Ok(Deleted::Nothing);
    };
    // Instances still in the VPC: running ones are left to their own
    // deletion; ones shutting down are waited for (their network
    // interfaces hold the subnet and group until they are gone).
    let mut wait = Duration::from_millis(500);
    for _ in 0..40 {
        let out = api
            .call("DescribeInstances", |c| {
                c.describe_instances().filters(filter("vpc-id", &vpc_id)).send()
            })
            .await?;
        let mut live = Vec::new();
        let mut stopping = false;
        for i in out.reservations().iter().flat_map(|r| r.instances()) {
            match i.state().and_then(|s| s.name()) {
                Some(InstanceStateName::Terminated) => {}
                Some(InstanceStateName::ShuttingDown) => stopping = true,
                _ => live.push(i.instance_id().unwrap_or_default().to_string()),
            }
        }
        if !live.is_empty() {
            return Ok(Deleted::InUse(live));
        }
        if !stopping {
            break;
        }
        tokio::time::sleep(wait).await;
        wait = (wait * 2).min(Duration::from_secs(10));
    }

    // Network interfaces linger for a while after their instance: a
    // DependencyViolation is retried, then left to the next attempt.
    let groups = api
        .call("DescribeSecurityGroups", |c| {
            c.describe_security_groups()
                .filters(filter("vpc-id", &vpc_id))
                .filters(filter(&format!("tag:{RUN_TAG}"), run_id))
                .send()
        })
        .await?;
    for g in groups.security_groups() {
        let id = g.group_id().unwrap_or_default().to_string();
        until_free(|| async {
            match api
                .call("DeleteSecurityGroup", |c| {
                    c.delete_security_group().group_id(&id).send()
                })
                .await
            {
                Err(e) if e.is("InvalidGroup.NotFound") => Ok(()),
                r => r.map(|_| ()),
            }
        })
        .await?;
    }
    let subnets = api
        .call("DescribeSubnets", |c| {
            c.describe_subnets().filters(filter("vpc-id", &vpc_id)).send()
        })
        .await?;
    for s in subnets.subnets() {
        let id = s.subnet_id().unwrap_or_default().to_string();
        until_free(|| async {
            match api
                .call("DeleteSubnet", |c| c.delete_subnet().subnet_id(&id).send())
                .await
            {
                Err(e) if e.is("InvalidSubnetID.NotFound") => Ok(()),
                r => r.map(|_| ()),
            }
        })
        .await?;
    }
    let gateways = api
        .call("DescribeInternetGateways", |c| {
            c.describe_internet_gateways()
                .filters(filter(&format!("tag:{RUN_TAG}"), run_id))
                .send()
        })
        .await?;
    for g in gateways.internet_gateways() {
        let id = g.internet_gateway_id().unwrap_or_default().to_string();
        if g.attachments().iter().any(|a| a.vpc_id() == Some(vpc_id.as_str())) {
            until_free(|| async {
                match api
                    .call("DetachInternetGateway", |c| {
                        c.detach_internet_gateway()
                            .internet_gateway_id(&id)
                            .vpc_id(&vpc_id)
                            .send()
                    })
                    .await
                {
                    Err(e) if e.is("Gateway.NotAttached") => Ok(()),
                    r => r.map(|_| ()),
                }
            })
            .await?;
        }
        match api
            .call("DeleteInternetGateway", |c| {
                c.delete_internet_gateway().internet_gateway_id(&id).send()
            })
            .await
        {
            Err(e) if e.is("InvalidInternetGatewayID.NotFound") => {}
            r => {
                r?;
            }
        }
    }
    until_free(|| async {
        match api.call("DeleteVpc", |c| c.delete_vpc().vpc_id(&vpc_id).send()).await {
            Err(e) if e.is("InvalidVpcID.NotFound") => Ok(()),
            r => r.map(|_| ()),
        }
    })
    .await?;
    Ok(Deleted::Network(vpc_id))
}

/// Repeat `step` while EC2 answers DependencyViolation (resources freed
/// asynchronously), for up to about two minutes; then it is transient.
async fn until_free<F, Fut>(mut step: F) -> Result<(), ApiError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), ApiError>>,
{
    let mut wait = Duration::from_secs(1);
    let mut waited = Duration::ZERO;
    loop {
        match step().await {
            Err(e) if e.is("DependencyViolation") || e.is("InvalidGroup.InUse") => {
                if waited >= Duration::from_secs(120) {
                    return Err(ApiError {
                        kind: FailureKind::Transient,
                        ..e
                    });
                }
                tokio::time::sleep(wait).await;
                waited += wait;
                wait = (wait * 2).min(Duration::from_secs(15));
            }
            r => return r,
        }
    }
}

fn missing(action: &str, what: &str) -> ApiError {
    failure(FailureKind::Transient, format!("{action}: EC2's answer has no {what}"))
}
