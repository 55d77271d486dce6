//! Issue 11's network benchmark. Needs root, the CNI plugins, `ip`, `nft` and busybox.
//!
//! 1. Pod network setup per VMI: a network namespace + CNI `ADD` (bridge, host-local,
//!    portmap) as virt-handler runs it, N times; and the teardown (CNI `DEL` + namespace).
//! 2. The physical reference: TCP throughput and latency between two such namespaces on the
//!    same bridge (busybox `nc` and `ping`).
//! 3. The same between two guests (the demo guest under TCG here) on a `kubevirt-rs server`'s
//!    pod network: a masquerade VMI receiving, a bridge VMI sending, at the address in the
//!    receiver's status.
//!
//! ```text
//! cargo build --release -p kubevirt-rs --bin kubevirt-rs --example net-bench
//! guest/build.sh target/guest
//! target/release/examples/net-bench [N=20] [--images target/guest/oci] [--mib 64]
//! ```

use anyhow::{bail, Context, Result};
use kubevirt_handler::cni::Cni;
use kubevirt_handler::podnet::{NodeNetwork, PodNetwork};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn pct(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

/// `round-trip min/avg/max = 0.061/0.080/0.112 ms` → the average.
fn ping_avg(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.contains("min/avg/max"))?;
    let nums = line.split('=').nth(1)?.trim();
    nums.split('/').nth(1)?.trim().parse().ok()
}

/// busybox `time`'s `real 0m 1.23s` → seconds.
fn busybox_real(out: &str) -> Option<f64> {
    let line = out.lines().find(|l| l.trim_start().starts_with("real"))?;
    let rest = line.trim_start().strip_prefix("real")?.trim();
    let (m, s) = rest.split_once('m')?;
    let s = s.trim().trim_end_matches('s');
    Some(m.trim().parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
}

fn netns_sh(ns: &str, script: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, "sh", "-c", script]);
    c
}

struct Row {
    what: String,
    value: String,
}

async fn setup_bench(n: usize, tmp: &Path, rows: &mut Vec<Row>) -> Result<(String, String)> {
    let node = NodeNetwork {
        cidr: "10.252.0.0/24".into(),
        bridge: "kvrs-bench".into(),
        ipam_dir: tmp.join("ipam"),
    };
    let pods = PodNetwork::new(node, Cni::new(tmp.join("cache")))?;
    let uids: Vec<String> = (0..n)
        .map(|i| format!("00000000-0000-4000-8000-{i:012x}"))
        .collect();
    let mut setup = Vec::new();
    let mut ips = Vec::new();
    for (i, uid) in uids.iter().enumerate() {
        let t = Instant::now();
        let st = pods
            .setup(
                uid,
                "bench",
                &format!("vmi-{i}"),
                &[PodNetwork::default_attach("default")],
            )
            .await
            .with_context(|| format!("setup {i}"))?;
        setup.push(t.elapsed());
        ips.push(st.ips("eth0").first().cloned().unwrap_or_default());
    }
    // The physical reference on the first two namespaces.
    let (a, b) = (
        PodNetwork::netns_name(&uids[0])?,
        PodNetwork::netns_name(&uids[1])?,
    );
    let reference = reference_bench(&a, &b, &ips[0], tmp);
    let mut teardown = Vec::new();
    for uid in &uids {
        let t = Instant::now();
        pods.teardown(uid).await?;
        teardown.push(t.elapsed());
    }
    let _ = Command::new("ip")
        .args(["link", "del", "kvrs-bench"])
        .status();
    setup.sort();
    teardown.sort();
    rows.push(Row {
        what: format!("pod network setup (netns + CNI ADD), {n} VMIs"),
        value: format!(
            "p50 {} ms, p95 {} ms, max {} ms",
            ms(pct(&setup, 0.5)),
            ms(pct(&setup, 0.95)),
            ms(pct(&setup, 1.0))
        ),
    });
    rows.push(Row {
        what: "pod network teardown (CNI DEL + netns)".into(),
        value: format!(
            "p50 {} ms, max {} ms",
            ms(pct(&teardown, 0.5)),
            ms(pct(&teardown, 1.0))
        ),
    });
    reference
}

/// What the receiving side runs for each connection (busybox `nc -e`): read everything.
/// busybox's small `nc` ends a connection when its own stdin ends, so a plain
/// `nc -l >/dev/null` started without a terminal would stop after the first read.
const SINK_SCRIPT: &str = "#!/bin/sh\nexec cat >/dev/null\n";

/// TCP throughput and ping latency between namespaces `a` (at `a_ip`) and `b`: the time
/// from the first byte sent until the receiver has read the last.
fn reference_bench(a: &str, b: &str, a_ip: &str, tmp: &Path) -> Result<(String, String)> {
    use std::os::unix::fs::PermissionsExt;
    let mib = 1024;
    let sink_script = tmp.join("sink");
    std::fs::write(&sink_script, SINK_SCRIPT)?;
    std::fs::set_permissions(&sink_script, std::fs::Permissions::from_mode(0o755))?;
    let mut sink = netns_sh(
        a,
        &format!("busybox nc -l -p 5001 -e {}", sink_script.display()),
    )
    .spawn()
    .context("nc -l")?;
    std::thread::sleep(Duration::from_millis(200));
    let t = Instant::now();
    let sent = netns_sh(
        b,
        &format!("dd if=/dev/zero bs=1M count={mib} 2>/dev/null | busybox nc {a_ip} 5001"),
    )
    .status()?;
    let received = sink.wait()?;
    let secs = t.elapsed().as_secs_f64();
    if !sent.success() || !received.success() {
        bail!("the reference transfer failed (sender {sent}, receiver {received})");
    }
    let ping = netns_sh(b, &format!("busybox ping -c 20 -i 0.05 {a_ip}")).output()?;
    let avg = ping_avg(&String::from_utf8_lossy(&ping.stdout)).unwrap_or(f64::NAN);
    Ok((
        format!("{:.0} Mbit/s", f64::from(mib) * 8.0 * 1.048_576 / secs),
        format!("{avg:.3} ms"),
    ))
}

struct Server {
    child: std::process::Child,
    data: PathBuf,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn kubectl(&self, args: &[&str]) -> String {
        let out = Command::new("kubectl")
            .args(args)
            .env("KUBECONFIG", self.data.join("kubeconfig"))
            .output();
        out.map(|o| {
            String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
        })
        .unwrap_or_default()
    }

    fn apply(&self, yaml: &str) -> Result<()> {
        let mut c = Command::new("kubectl")
            .args(["apply", "-f", "-"])
            .env("KUBECONFIG", self.data.join("kubeconfig"))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()?;
        c.stdin
            .take()
            .context("stdin")?
            .write_all(yaml.as_bytes())?;
        if !c.wait()?.success() {
            bail!("kubectl apply failed");
        }
        Ok(())
    }

    fn running_ip(&self, name: &str) -> Result<String> {
        for _ in 0..600 {
            let out = self.kubectl(&[
                "get",
                "vmi",
                name,
                "-o",
                "jsonpath={.status.phase} {.status.interfaces[0].ipAddress}",
            ]);
            if let Some(ip) = out.strip_prefix("Running ").filter(|i| !i.is_empty()) {
                return Ok(ip.to_string());
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        bail!("{name} never ran")
    }

    /// Types `command` on the VMI's serial console (its `console.sock`) and returns what the
    /// guest prints until `until` appears, or what it printed by `timeout`.
    fn console(&self, vmi: &str, command: &str, until: &str, timeout: u64) -> Result<String> {
        use std::io::Read;
        let sock =
            kubevirt_launcher::api::VmiDir::new(&self.data, "default", vmi)?.console_socket();
        let mut c = std::os::unix::net::UnixStream::connect(&sock)
            .with_context(|| format!("{}", sock.display()))?;
        c.write_all(format!("\n{command}\n").as_bytes())?;
        let deadline = Instant::now() + Duration::from_secs(timeout);
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        while Instant::now() < deadline {
            c.set_read_timeout(Some(Duration::from_millis(200)))?;
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => out.extend_from_slice(&buf[..n]),
                Err(e)
                    if e.kind() == std::io::ErrorKind::WouldBlock
                        || e.kind() == std::io::ErrorKind::TimedOut => {}
                Err(e) => return Err(e.into()),
            }
            if String::from_utf8_lossy(&out).contains(until) {
                break;
            }
        }
        Ok(String::from_utf8_lossy(&out).replace('\r', ""))
    }
}

fn vmi(name: &str, binding: &str, user_data: &str) -> String {
    format!(
        "apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: {name}}}
spec:
  terminationGracePeriodSeconds: 0
  domain:
    devices:
      disks:
      - {{name: rootdisk, disk: {{bus: virtio}}}}
      - {{name: cloudinit, disk: {{bus: virtio}}}}
      interfaces:
      - {{name: default, {binding}: {{}}}}
    resources: {{requests: {{memory: 128Mi}}}}
  networks:
  - {{name: default, pod: {{}}}}
  volumes:
  - {{name: rootdisk, containerDisk: {{image: 'kubevirt-rs/demo-guest:latest'}}}}
  - name: cloudinit
    cloudInitNoCloud:
      userData: |
        #!/bin/sh
        {user_data}
"
    )
}

fn guest_bench(bin: &Path, images: &Path, tmp: &Path, mib: u32) -> Result<(String, String)> {
    let data = tmp.join("server");
    let mut child = Command::new(bin)
        .args(["server", "--listen", "127.0.0.1:0", "--node-name", "bench"])
        .arg("--data-dir")
        .arg(&data)
        .arg("--image-store")
        .arg(images)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting the server")?;
    let mut reader = BufReader::new(child.stderr.take().context("stderr")?);
    let mut banner = String::new();
    reader.read_line(&mut banner)?;
    // Keep draining: a server whose stderr is closed dies at its next log line.
    std::thread::spawn(move || for _ in reader.lines().map_while(Result::ok) {});
    let s = Server { child, data };
    s.apply(&vmi(
        "sink",
        "masquerade",
        &format!(
            "printf '{}' >/sink; chmod +x /sink\n        while :; do busybox nc -l -p 5001 -e /sink; done &",
            SINK_SCRIPT.replace('\n', "\\n")
        ),
    ))?;
    s.apply(&vmi("source", "bridge", "true"))?;
    let sink_ip = s.running_ip("sink")?;
    s.running_ip("source")?;
    // Until the guest's network is up and the sink listens.
    let mut ok = false;
    for _ in 0..60 {
        if s.console(
            "source",
            &format!("echo x | busybox nc -w 2 {sink_ip} 5001 && echo SENT-$((1+1))"),
            "SENT-2",
            5,
        )?
        .contains("SENT-2")
        {
            ok = true;
            break;
        }
    }
    if !ok {
        bail!("the source guest never reached {sink_ip}:5001");
    }
    // Timed in the sender: what it wrote past the receiver's socket buffer is small next to
    // the transfer.
    let out = s.console(
        "source",
        &format!(
            "time sh -c 'dd if=/dev/zero bs=64k count={} 2>/dev/null | busybox nc {sink_ip} 5001'",
            mib * 16
        ),
        "\nsys",
        600,
    )?;
    let secs = busybox_real(&out).with_context(|| format!("no timing in:\n{out}"))?;
    let ping = s.console(
        "source",
        &format!("busybox ping -c 20 {sink_ip}"),
        "round-trip",
        60,
    )?;
    let avg = ping_avg(&ping).unwrap_or(f64::NAN);
    s.kubectl(&[
        "delete",
        "vmi",
        "sink",
        "source",
        "--wait=true",
        "--timeout=60s",
    ]);
    Ok((
        format!(
            "{:.0} Mbit/s ({mib} MiB in {secs:.2} s)",
            f64::from(mib) * 8.0 * 1.048_576 / secs
        ),
        format!("{avg:.3} ms"),
    ))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<()> {
    let mut n = 20usize;
    let mut images = PathBuf::from("target/guest/oci");
    let mut mib = 64u32;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--images" => images = args.next().context("--images DIR")?.into(),
            "--mib" => mib = args.next().context("--mib N")?.parse()?,
            n_ if n_.parse::<usize>().is_ok() => n = n_.parse()?,
            other => bail!("unknown argument {other}"),
        }
    }
    if n < 2 {
        bail!("N must be at least 2");
    }
    let bin = std::env::current_exe()?
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("kubevirt-rs"))
        .context("the kubevirt-rs binary beside examples/")?;
    let tmp = tempfile::tempdir()?;
    let mut rows = Vec::new();
    let (ref_tput, ref_lat) = setup_bench(n, tmp.path(), &mut rows).await?;
    rows.push(Row {
        what: "namespace → namespace on the bridge: TCP throughput".into(),
        value: ref_tput,
    });
    rows.push(Row {
        what: "namespace → namespace: ping round trip (avg)".into(),
        value: ref_lat,
    });
    if images.join("index.json").exists() && bin.exists() {
        let (tput, lat) = guest_bench(&bin, &images, tmp.path(), mib)?;
        rows.push(Row {
            what: "guest → guest (TCG, bridge → masquerade): TCP throughput".into(),
            value: tput,
        });
        rows.push(Row {
            what: "guest → guest: ping round trip (avg)".into(),
            value: lat,
        });
    } else {
        eprintln!(
            "net-bench: skipping the guest rows: no {} or {} (see the header)",
            images.display(),
            bin.display()
        );
    }
    let w = rows.iter().map(|r| r.what.len()).max().unwrap_or(10);
    println!("| {:w$} | result |", "measurement");
    println!("|{}|---|", "-".repeat(w + 2));
    for r in &rows {
        println!("| {:w$} | {} |", r.what, r.value);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #[test]
    fn busybox_outputs_parse() {
        assert_eq!(
            super::ping_avg("round-trip min/avg/max = 0.061/0.080/0.112 ms"),
            Some(0.080)
        );
        assert_eq!(
            super::busybox_real("real\t0m 1.23s\nuser\t0m 0.01s"),
            Some(1.23)
        );
        assert_eq!(super::busybox_real("real\t1m 2.50s"), Some(62.5));
    }
}
