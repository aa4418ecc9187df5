//! `failoverctl`: the operator's tool. Parses the command line, calls the
//! coordinator's admin API, prints the answer. Exit status 0 on success,
//! 1 with a one-line reason on stderr when the coordinator refuses or
//! cannot be reached, 2 for a malformed command line.

mod cli;
mod output;
mod pki;
mod settings;

use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use cli::{
    Cli, ClusterCommand, Command, GroupCommand, MemberCommand, NodeCommand, Output, PkiCommand,
};
use futures::StreamExt;
use proto::client::{ClientTls, endpoint};
use proto::v1 as pb;
use proto::v1::admin_service_client::AdminServiceClient;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if !e.use_stderr() => {
            // --help and --version
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => return usage_error(&e),
    };
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let url = cli.coordinator.clone();
    match runtime.block_on(run_at_leader(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e, &url));
            ExitCode::FAILURE
        }
    }
}

/// A malformed command line: clap's reason on one line, exit status 2.
fn usage_error(e: &clap::Error) -> ExitCode {
    let rendered = e.render().to_string();
    // clap's reason is the paragraph before its usage block; its "did you
    // mean" tips follow it.
    let mut reason = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(str::trim)
        .collect::<Vec<_>>()
        .join(" ");
    for tip in rendered
        .lines()
        .filter_map(|l| l.trim().strip_prefix("tip: "))
    {
        reason.push_str(&format!(" ({tip})"));
    }
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        eprint!("{rendered}");
    } else {
        eprintln!("{reason} (see failoverctl --help)");
    }
    ExitCode::from(2)
}

/// The error and its causes on one line, each cause once; a coordinator's
/// refusal is shown as its message alone; a failed connection says what
/// most likely went wrong (`proto::client::explain`).
fn one_line(e: &anyhow::Error, url: &str) -> String {
    if let Some(status) = e.downcast_ref::<tonic::Status>() {
        return status_line(status, url);
    }
    proto::client::explain(url, &format!("{e:#}").replace('\n', " "))
}

fn status_line(status: &tonic::Status, url: &str) -> String {
    let message = status.message().replace('\n', " ");
    match status.code() {
        tonic::Code::Unavailable => {
            proto::client::explain(url, &format!("coordinator unavailable: {message}"))
        }
        tonic::Code::Unknown | tonic::Code::Internal | tonic::Code::Cancelled => {
            proto::client::explain(url, &format!("coordinator failed: {message}"))
        }
        _ => message,
    }
}

/// The admin client: TLS for https:// URLs, and the bearer token (read
/// from its file) on every call.
type Client = AdminServiceClient<InterceptedService<Channel, Bearer>>;

/// Runs the command; if a coordinator replica that does not lead refused
/// it, runs it again at the leader it named (once: the refusal changed
/// nothing).
async fn run_at_leader(cli: Cli) -> anyhow::Result<()> {
    let retry = cli.clone();
    match run(cli).await {
        Err(e) => match leader_hint(&e) {
            Some(leader) => {
                eprintln!(
                    "note: the coordinator replica asked does not lead; asking the leader at {leader}"
                );
                let mut at_leader = retry;
                at_leader.coordinator = leader.clone();
                run(at_leader).await.map_err(|e| {
                    if e.downcast_ref::<tonic::Status>().is_some() {
                        e
                    } else {
                        e.context(format!(
                            "the leader is {leader}, which cannot be reached from here (give \
                             --coordinator addresses of the replicas that this machine can reach)"
                        ))
                    }
                })
            }
            None => Err(e),
        },
        ok => ok,
    }
}

/// The leader a refusing replica named.
fn leader_hint(e: &anyhow::Error) -> Option<String> {
    let status = e.downcast_ref::<tonic::Status>()?;
    let leader = status.metadata().get(proto::LEADER_METADATA)?;
    leader.to_str().ok().map(str::to_owned)
}

/// Connects to the first of the comma-separated URLs that answers.
async fn connect(cli: &Cli) -> anyhow::Result<Client> {
    let urls: Vec<&str> = cli
        .coordinator
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let mut last = None;
    for url in &urls {
        match connect_to(cli, url).await {
            Ok(client) => return Ok(client),
            Err(e) if urls.len() > 1 => last = Some(e.context(url.to_string())),
            Err(e) => return Err(e),
        }
    }
    Err(last.unwrap_or_else(|| anyhow::anyhow!("--coordinator names no URL")))
}

async fn connect_to(cli: &Cli, url: &str) -> anyhow::Result<Client> {
    let tls = ClientTls {
        ca: cli.tls_ca.clone(),
        cert: cli.tls_cert.clone(),
        key: cli.tls_key.clone(),
    };
    let token = match &cli.token_file {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read the token file {}", path.display()))?;
            let token = text.trim();
            if token.is_empty() {
                anyhow::bail!("the token file {} is empty", path.display());
            }
            let value = format!("Bearer {token}")
                .parse()
                .with_context(|| format!("the token in {} is not plain text", path.display()))?;
            Some(value)
        }
        None => None,
    };
    if token.is_some() && url.starts_with("http://") && !is_loopback_url(url) {
        anyhow::bail!(
            "refusing to send a bearer token over plaintext to {url}: use https:// (with --tls-ca)"
        );
    }
    // The whole of connecting — TCP, TLS, HTTP/2 — within the limit: a
    // listener that accepts and never answers must not hold the operator.
    let channel = tokio::time::timeout(
        CONNECT_TIMEOUT,
        endpoint(url, &tls, CONNECT_TIMEOUT)?.connect(),
    )
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "cannot connect to the coordinator at {url}: no answer within {CONNECT_TIMEOUT:?}"
        )
    })?
    .with_context(|| format!("cannot connect to the coordinator at {url}"))?;
    Ok(AdminServiceClient::with_interceptor(channel, Bearer(token)))
}

/// Whether a URL's host is this machine (`localhost`, 127.0.0.0/8, ::1).
fn is_loopback_url(url: &str) -> bool {
    let Ok(uri) = url.parse::<tonic::codegen::http::Uri>() else {
        return false;
    };
    let host = uri
        .host()
        .unwrap_or("")
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Adds `authorization: Bearer TOKEN` to every request, when there is one.
#[derive(Clone)]
struct Bearer(Option<tonic::metadata::MetadataValue<tonic::metadata::Ascii>>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

fn print(output: Output, json: serde_json::Value, table: String) {
    match output {
        Output::Json => say(&serde_json::to_string_pretty(&json).unwrap_or_default()),
        Output::Table => say(table.trim_end()),
    }
}

/// Prints a line; a reader that went away (`| head`) ends the program
/// quietly instead of with a panic.
fn say(line: &str) {
    use std::io::Write;
    let mut stdout = std::io::stdout().lock();
    if writeln!(stdout, "{line}")
        .and_then(|()| stdout.flush())
        .is_err()
    {
        std::process::exit(0);
    }
}

fn print_group(output: Output, g: &pb::GroupStatus) {
    print(
        output,
        proto::json::group_json(g),
        output::group_table(g, None),
    );
}

fn pretty(json: &serde_json::Value) -> String {
    serde_json::to_string_pretty(json).unwrap_or_default()
}

/// Every group, in name order.
async fn all_groups(client: &Client) -> Result<Vec<pb::GroupStatus>, tonic::Status> {
    proto::pages::all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let page = client
                .list_groups(pb::ListGroupsRequest {
                    page_size: 0,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.groups, page.next_page_token))
        }
    })
    .await
}

/// Every node, in name order.
async fn all_nodes(client: &Client) -> Result<Vec<pb::NodeStatus>, tonic::Status> {
    proto::pages::all_pages(|page_token| {
        let mut client = client.clone();
        async move {
            let page = client
                .list_nodes(pb::ListNodesRequest {
                    page_size: 0,
                    page_token,
                })
                .await?
                .into_inner();
            Ok((page.nodes, page.next_page_token))
        }
    })
    .await
}

/// When the group's primary was promoted (its latest `promoted` event),
/// if the log still holds it.
async fn primary_since(client: &mut Client, g: &pb::GroupStatus) -> Option<u64> {
    if g.primary.is_empty() {
        return None;
    }
    let request = pb::ListEventsRequest {
        group: g.name.clone(),
        limit: 0,
    };
    let events = client.list_events(request).await.ok()?.into_inner().events;
    events
        .iter()
        .rev()
        .find(|e| e.kind == "promoted" && e.new_primary == g.primary && e.epoch <= g.epoch)
        .map(|e| e.unix_ms)
}

/// `events --follow`: prints each event as it comes; when the stream ends
/// (the coordinator restarted, the leader changed, the watch fell behind)
/// it connects again — to the leader a replica names — and goes on after
/// the last event printed, saying so on stderr. Ends only on a refusal
/// (a credential or role) or when interrupted.
async fn follow(
    cli: &Cli,
    mut client: Client,
    mut request: pb::ListEventsRequest,
    mut show: impl FnMut(&pb::Event),
) -> anyhow::Result<()> {
    let mut last: Option<u64> = None;
    let mut target = cli.clone();
    loop {
        let ended = match client.watch_events(request.clone()).await {
            Ok(stream) => {
                let mut stream = stream.into_inner();
                loop {
                    match stream.next().await {
                        Some(Ok(event)) => {
                            if last.is_some_and(|l| event.seq <= l) {
                                continue;
                            }
                            if let Some(l) = last
                                && event.seq > l.saturating_add(1)
                            {
                                eprintln!(
                                    "note: events #{}..#{} are no longer in the log (event_retention)",
                                    l.saturating_add(1),
                                    event.seq - 1
                                );
                            }
                            last = Some(event.seq);
                            show(&event);
                        }
                        Some(Err(status)) => break status,
                        None => {
                            break tonic::Status::unavailable("the coordinator ended the stream");
                        }
                    }
                }
            }
            Err(status) => status,
        };
        use tonic::Code;
        if !matches!(
            ended.code(),
            Code::Unavailable
                | Code::Cancelled
                | Code::Unknown
                | Code::Internal
                | Code::DataLoss
                | Code::DeadlineExceeded
        ) {
            return Err(ended.into());
        }
        eprintln!(
            "note: the event stream ended ({}); reconnecting",
            status_line(&ended, &target.coordinator)
        );
        if let Some(leader) = leader_hint(&anyhow::Error::from(ended.clone())) {
            target.coordinator = leader;
        }
        client = loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            match connect(&target).await {
                Ok(client) => break client,
                Err(_) if target.coordinator != cli.coordinator => {
                    // The named leader is gone too: ask the given ones.
                    target.coordinator = cli.coordinator.clone();
                }
                Err(_) => {}
            }
        };
        // After a reconnect: as much of the recent log as one answer
        // holds; what was printed already is skipped.
        request.limit = if last.is_some() { 0 } else { request.limit };
    }
}

/// Prints what `render` makes once, or — with an interval — again and
/// again until interrupted (on a terminal, each time on a clear screen).
/// While watching, a failure is shown and the next turn tries again.
async fn watching<F, Fut>(interval: Option<Duration>, mut render: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = anyhow::Result<String>>,
{
    use std::io::IsTerminal;
    let Some(interval) = interval else {
        say(render().await?.trim_end());
        return Ok(());
    };
    let terminal = std::io::stdout().is_terminal();
    loop {
        let shown = match render().await {
            Ok(text) => text,
            Err(e) => format!("error: {}", one_line(&e, "")),
        };
        if terminal {
            // Home, clear the screen, then the time of this view.
            say(&format!(
                "\x1b[H\x1b[2J{} (every {}; Ctrl-C to stop)\n",
                humantime::format_rfc3339_seconds(std::time::SystemTime::now()),
                humantime::format_duration(interval)
            ));
        }
        say(shown.trim_end());
        tokio::time::sleep(interval).await;
    }
}

/// Asks `question` on the terminal before something destructive
/// (`doing`); without a terminal, refuses (the caller adds --yes).
fn confirm(question: &str, doing: &str) -> anyhow::Result<()> {
    use std::io::{BufRead, IsTerminal, Write};
    if !std::io::stdin().is_terminal() {
        anyhow::bail!(
            "not {doing} without confirmation (no terminal to ask on): add --yes to go ahead"
        );
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer)?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => anyhow::bail!("not done: not confirmed"),
    }
}

/// Warns about members that have not connected since the coordinator
/// started (only `node` when given): a typo in a node id makes a member
/// that never serves, and a high-priority one holds nothing back.
fn warn_unknown_members(g: &pb::GroupStatus, node: Option<&str>) {
    for m in &g.members {
        if node.is_some_and(|n| n != m.node) {
            continue;
        }
        if !m.connected && m.last_contact_unix_ms == 0 {
            eprintln!(
                "warning: {} has not connected to the coordinator since it started: check the node id (a typo makes a member that never serves)",
                m.node
            );
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.command {
        Command::Completions { shell } => {
            let mut command = <Cli as clap::CommandFactory>::command();
            let mut script = Vec::new();
            clap_complete::generate(*shell, &mut command, "failoverctl", &mut script);
            say(String::from_utf8_lossy(&script).trim_end());
            return Ok(());
        }
        Command::Man { dir } => {
            let command = <Cli as clap::CommandFactory>::command();
            if let Some(dir) = dir {
                // One page per command and subcommand (failoverctl-group-add.1, ...).
                std::fs::create_dir_all(dir)
                    .with_context(|| format!("cannot create {}", dir.display()))?;
                clap_mangen::generate_to(command, dir)
                    .with_context(|| format!("cannot write the pages into {}", dir.display()))?;
                return Ok(());
            }
            let mut page = Vec::new();
            clap_mangen::Man::new(command).render(&mut page)?;
            say(String::from_utf8_lossy(&page).trim_end());
            return Ok(());
        }
        _ => {}
    }
    if let Command::Pki(pki) = &cli.command {
        return match pki {
            PkiCommand::Init { dir, sans } => pki::init(dir, sans),
            PkiCommand::Issue {
                dir,
                node,
                operator,
                role,
                coordinator_cert,
                sans,
                days,
            } => {
                let subject = match (node, operator, role) {
                    _ if *coordinator_cert => pki::Subject::Coordinator { sans: sans.clone() },
                    (Some(node), _, _) => pki::Subject::Node(node.clone()),
                    (None, Some(name), Some(role)) => pki::Subject::Operator {
                        name: name.clone(),
                        role: role.clone(),
                    },
                    _ => anyhow::bail!("give --node NAME, or --operator NAME with --role ROLE"),
                };
                pki::issue(dir, &subject, *days)
            }
            PkiCommand::Token {
                name,
                role,
                secret_file,
            } => pki::token(name, role, secret_file.as_deref()),
        };
    }
    let mut client = connect(&cli).await?;
    let reconnect = cli.clone();
    let out = cli.output;
    match cli.command {
        Command::Group(GroupCommand::Add(args)) => {
            let request = pb::CreateGroupRequest {
                name: args.name,
                members: args.members,
                policy: Some(args.policy.to_proto()),
            };
            let g = client.create_group(request).await?.into_inner();
            warn_unknown_members(&g, None);
            print_group(out, &g);
        }
        Command::Group(GroupCommand::Set { name, policy }) => {
            let request = pb::UpdateGroupRequest {
                name,
                policy: Some(policy.to_proto()),
            };
            let g = client.update_group(request).await?.into_inner();
            print_group(out, &g);
        }
        Command::Group(GroupCommand::Takeover { name, to, yes }) => {
            if !yes {
                let g = client
                    .get_group(pb::GetGroupRequest { name: name.clone() })
                    .await?
                    .into_inner();
                let healthy = g
                    .members
                    .iter()
                    .find(|m| m.node == g.primary)
                    .is_some_and(|m| m.connected && m.healthy);
                if healthy {
                    confirm(
                        &format!(
                            "The primary of {name}, {}, is healthy: a takeover moves the role away from it. Take over?",
                            g.primary
                        ),
                        &format!("taking {name} over from its healthy primary {}", g.primary),
                    )?;
                }
            }
            let request = pb::TakeoverRequest {
                group: name,
                to: to.unwrap_or_default(),
            };
            let g = client.takeover(request).await?.into_inner();
            print_group(out, &g);
        }
        Command::Group(GroupCommand::Restore { name }) => {
            let g = client
                .restore(pb::RestoreRequest { group: name })
                .await?
                .into_inner();
            print_group(out, &g);
        }
        Command::Group(GroupCommand::List) => {
            let groups = all_groups(&client).await?;
            print(
                out,
                proto::json::groups_json(&groups),
                output::groups_table(&groups),
            );
        }
        Command::Group(GroupCommand::Show { name, watch }) => {
            watching(watch.watch, || {
                let mut client = client.clone();
                let name = name.clone();
                async move {
                    let g = client
                        .get_group(pb::GetGroupRequest { name: name.clone() })
                        .await?
                        .into_inner();
                    let since = primary_since(&mut client, &g).await;
                    Ok(match out {
                        Output::Json => pretty(&proto::json::group_json(&g)),
                        Output::Table => output::group_table(&g, since),
                    })
                }
            })
            .await?;
        }
        Command::Status(watch) => {
            watching(watch.watch, || {
                let client = client.clone();
                async move {
                    let groups = all_groups(&client).await?;
                    Ok(match out {
                        Output::Json => pretty(&proto::json::groups_json(&groups)),
                        Output::Table => output::status_table(&groups),
                    })
                }
            })
            .await?;
        }
        Command::Group(GroupCommand::Delete { name, yes }) => {
            if !yes {
                confirm(
                    &format!(
                        "Delete group {name}? Its primary steps down and its members stop serving it."
                    ),
                    &format!("deleting group {name}"),
                )?;
            }
            client
                .delete_group(pb::DeleteGroupRequest { name: name.clone() })
                .await?;
            print(
                out,
                serde_json::json!({ "deleted": name }),
                format!("group {name} deleted"),
            );
        }
        Command::Group(GroupCommand::Promote { name, to }) => {
            let g = client
                .promote(pb::PromoteRequest { group: name, to })
                .await?
                .into_inner();
            print_group(out, &g);
        }
        Command::Group(GroupCommand::Member(member)) => {
            let g = match member {
                MemberCommand::Add {
                    name,
                    node,
                    position,
                } => {
                    let request = pb::AddMemberRequest {
                        group: name,
                        node: node.clone(),
                        position,
                    };
                    let answer = client.add_member(request).await?;
                    warn_unknown_members(answer.get_ref(), Some(&node));
                    answer
                }
                MemberCommand::Remove { name, node } => {
                    let request = pb::RemoveMemberRequest { group: name, node };
                    client.remove_member(request).await?
                }
                MemberCommand::Move {
                    name,
                    node,
                    position,
                } => {
                    let request = pb::MoveMemberRequest {
                        group: name,
                        node,
                        position,
                    };
                    client.move_member(request).await?
                }
                MemberCommand::Drain { name, node } => {
                    let request = pb::DrainMemberRequest { group: name, node };
                    client.drain_member(request).await?
                }
                MemberCommand::Undrain { name, node } => {
                    let request = pb::DrainMemberRequest { group: name, node };
                    client.undrain_member(request).await?
                }
            }
            .into_inner();
            print_group(out, &g);
        }
        Command::Node(NodeCommand::List) => {
            let nodes = all_nodes(&client).await?;
            print(
                out,
                proto::json::nodes_json(&nodes),
                output::nodes_table(&nodes),
            );
        }
        // Handled above, without a coordinator.
        Command::Pki(_) | Command::Completions { .. } | Command::Man { .. } => {}
        Command::Cluster(ClusterCommand::Status) => {
            let status = client
                .cluster_status(pb::ClusterStatusRequest {})
                .await?
                .into_inner();
            print(
                out,
                proto::json::cluster_json(&status),
                output::cluster_table(&status),
            );
        }
        Command::Events(args) => {
            let request = pb::ListEventsRequest {
                group: args.group.unwrap_or_default(),
                limit: args.limit,
            };
            let since_ms = args.since.map(|at| {
                at.duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
            });
            let wanted = |e: &pb::Event| since_ms.is_none_or(|s| e.unix_ms >= s);
            if args.follow {
                follow(&reconnect, client, request, |event| {
                    if wanted(event) {
                        match out {
                            Output::Json => say(&proto::json::event_json(event).to_string()),
                            Output::Table => say(&output::event_line(event)),
                        }
                    }
                })
                .await?;
            } else {
                let mut events = client.list_events(request).await?.into_inner().events;
                events.retain(wanted);
                let json =
                    serde_json::Value::Array(events.iter().map(proto::json::event_json).collect());
                let lines = events
                    .iter()
                    .map(output::event_line)
                    .collect::<Vec<_>>()
                    .join("\n");
                print(out, json, lines);
            }
        }
    }
    Ok(())
}
