//! qcow2 → raw conversion benchmark: our converter against `qemu-img convert -O raw`.
//!
//! `cargo run --release -p kubevirt-cdi --bin cdi-bench -- [--dir DIR] [--size-gib N] [--runs N]`
//!
//! Builds a qcow2 whose guest data is half random, half zeros (N GiB virtual, default 2),
//! then converts it with each tool `runs` times (default 5) with the page cache warmed the
//! same way before every run, and prints the medians. Our converter runs in a child process
//! (this binary with `--convert`), which reports its peak RSS (VmHWM). Both outputs are fsynced
//! inside the timed region (our importer always fsyncs before it hands a volume over; qemu-img
//! is followed by an fsync of its output), and the outputs are compared.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use kubevirt_cdi::{import, ImportOptions, ProgressSink, Source, Target};

const MIB: u64 = 1 << 20;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.get(1).map(String::as_str) == Some("--convert") {
        child(&args[2..]);
        return;
    }
    let mut dir = PathBuf::from("/var/tmp/cdi-bench");
    let mut size_gib = 2u64;
    let mut runs = 5usize;
    let mut i = 1;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--dir" => dir = PathBuf::from(v),
            "--size-gib" => size_gib = v.parse().unwrap_or(2),
            "--runs" => runs = v.parse().unwrap_or(5),
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
        i += 2;
    }
    if let Err(e) = bench(&dir, size_gib, runs) {
        eprintln!("cdi-bench: {e}");
        std::process::exit(1);
    }
}

type Res<T> = Result<T, Box<dyn std::error::Error>>;

fn sh(cmd: &mut Command) -> Res<()> {
    let st = cmd.status()?;
    if !st.success() {
        return Err(format!("{cmd:?} failed: {st}").into());
    }
    Ok(())
}

fn make_source(dir: &Path, size: u64) -> Res<PathBuf> {
    let qcow = dir.join(format!("src-{}g.qcow2", size / 1024 / MIB));
    if qcow.exists() {
        return Ok(qcow);
    }
    let raw = dir.join("src.raw");
    let mut f = std::fs::File::create(&raw)?;
    // xorshift64*: random enough that nothing compresses or looks zero.
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut buf = vec![0u8; 8 << 20];
    let mut written = 0;
    while written < size / 2 {
        for c in buf.chunks_exact_mut(8) {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            c.copy_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
        }
        f.write_all(&buf)?;
        written += buf.len() as u64;
    }
    f.set_len(size)?;
    drop(f);
    let tmp = dir.join("src.qcow2.tmp");
    sh(Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw)
        .arg(&tmp))?;
    std::fs::rename(&tmp, &qcow)?;
    std::fs::remove_file(&raw)?;
    Ok(qcow)
}

/// Flushes everything dirty (so no run pays for the previous one's writeback), then reads
/// the source so it is in the page cache.
fn warm(path: &Path) -> Res<()> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
    let mut f = std::fs::File::open(path)?;
    std::io::copy(&mut f, &mut std::io::sink())?;
    Ok(())
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn bench(dir: &Path, size_gib: u64, runs: usize) -> Res<()> {
    std::fs::create_dir_all(dir)?;
    let size = size_gib << 30;
    eprintln!(
        "building the {size_gib} GiB source qcow2 in {} ...",
        dir.display()
    );
    let src = make_source(dir, size)?;
    let exe = std::env::current_exe()?;
    let ours_out = dir.join("ours.img");
    let qemu_out = dir.join("qemu.img");
    let (mut t_ours, mut t_qemu, mut t_qemu_nosync, mut hwm) = (vec![], vec![], vec![], 0u64);
    for run in 0..runs {
        let _ = std::fs::remove_file(&qemu_out);
        warm(&src)?;
        let t = Instant::now();
        sh(Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&src)
            .arg(&qemu_out))?;
        let nosync = t.elapsed();
        std::fs::File::open(&qemu_out)?.sync_all()?;
        t_qemu.push(t.elapsed());
        t_qemu_nosync.push(nosync);

        let _ = std::fs::remove_file(&ours_out);
        warm(&src)?;
        let t = Instant::now();
        let out = Command::new(&exe)
            .arg("--convert")
            .arg(&src)
            .arg(&ours_out)
            .arg(size.to_string())
            .output()?;
        let el = t.elapsed();
        if !out.status.success() {
            return Err(format!(
                "our converter failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        let h: u64 = String::from_utf8_lossy(&out.stdout).trim().parse()?;
        hwm = hwm.max(h);
        t_ours.push(el);
        eprintln!(
            "run {}: qemu-img {:.2}s (+fsync {:.2}s), ours {:.2}s, ours VmHWM {} KiB",
            run + 1,
            nosync.as_secs_f64(),
            t_qemu[run].as_secs_f64(),
            el.as_secs_f64(),
            h
        );
    }
    sh(Command::new("cmp").arg(&ours_out).arg(&qemu_out))?;
    let mibs = |d: Duration| (size / MIB) as f64 / d.as_secs_f64();
    let (mo, mq, mqn) = (median(t_ours), median(t_qemu), median(t_qemu_nosync));
    println!("qcow2 -> raw, {size_gib} GiB virtual (half random, half zero), median of {runs}, page cache warm");
    println!();
    println!("| converter | time (s) | throughput (MiB/s) | ratio vs qemu-img + fsync |");
    println!("|---|---|---|---|");
    println!(
        "| qemu-img convert -O raw, then fsync | {:.2} | {:.0} | 1.00 |",
        mq.as_secs_f64(),
        mibs(mq)
    );
    println!(
        "| qemu-img convert -O raw (no fsync) | {:.2} | {:.0} | {:.2} |",
        mqn.as_secs_f64(),
        mibs(mqn),
        mq.as_secs_f64() / mqn.as_secs_f64()
    );
    println!(
        "| kubevirt-cdi import (fsync + rename) | {:.2} | {:.0} | {:.2} |",
        mo.as_secs_f64(),
        mibs(mo),
        mq.as_secs_f64() / mo.as_secs_f64()
    );
    println!();
    println!(
        "peak RSS of our conversion (VmHWM, whole process): {:.1} MiB",
        hwm as f64 / 1024.0
    );
    let _ = std::fs::remove_file(&ours_out);
    let _ = std::fs::remove_file(&qemu_out);
    Ok(())
}

/// `--convert SRC DST SIZE`: imports SRC into DST, prints VmHWM in KiB.
fn child(args: &[String]) {
    let (Some(src), Some(dst), Some(size)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!("usage: cdi-bench --convert SRC DST SIZE");
        std::process::exit(2);
    };
    let size: u64 = size.parse().unwrap_or(0);
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let r = rt.block_on(import(
        &Source::Local {
            path: PathBuf::from(src),
        },
        &Target::new(dst, size),
        &ImportOptions::default(),
        ProgressSink::none(),
    ));
    if let Err(e) = r {
        eprintln!("{e}");
        std::process::exit(1);
    }
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .unwrap_or(0);
    println!("{hwm}");
}
