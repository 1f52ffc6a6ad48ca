//! A migration stream captured from QEMU (`migrate "exec:cat > FILE"`) through a sender and a
//! receiver in one process: `cargo run --release -p hde-qemu --example roundtrip -- FILE`
//! prints what each side did and whether the rebuilt stream equals the file.
use hde_core::HdeConfig;
use hde_qemu::{MigrationReceiver, MigrationSender, Options};
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("path")?;
    let source = std::fs::read(path)?;
    let mut config = HdeConfig::new(1);
    if let Some(mode) = std::env::args().nth(2) {
        config.network_mode = mode.parse()?;
    }
    if let Some(rate) = std::env::args().nth(3) {
        config.bandwidth = rate.parse()?;
    }
    let mut options = Options::new("vm", config);
    if let Some(mb) = std::env::var("BATCH_MB").ok().and_then(|v| v.parse::<usize>().ok()) {
        options.batch_bytes = mb << 20;
    }
    let mut s = MigrationSender::new(&options)?;
    let mut r = MigrationReceiver::new(&options)?;
    let (mut wire, mut out) = (Vec::new(), Vec::new());
    let t = std::time::Instant::now();
    for c in source.chunks(1 << 16) {
        s.push(c, &mut wire)?;
    }
    let st = s.finish(&mut wire)?;
    let sent = t.elapsed().as_secs_f64();
    r.push(&wire, &mut out)?;
    println!("sender {sent:.3}s receiver {:.3}s", t.elapsed().as_secs_f64() - sent);
    let rs = r.finish()?;
    println!("{:?}\n{:?}\n{:.3}s equal={}", st, rs, t.elapsed().as_secs_f64(), out == source);
    Ok(())
}
