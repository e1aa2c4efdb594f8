//! `mls`: the Delivery Service core in process, no server: a room
//! of N devices built by external joins, then the sizes the server stores
//! and relays and the CPU it spends per commit (load the row, check and
//! merge the commit, write the row), beside a device's time per external
//! join. Numbers for BENCHMARKS.md.

use std::time::{Duration, Instant};

use clap::Args;
use e2ee_chat::client::mls::Device;
use e2ee_chat::mls::{Committer, RoomGroup, Roster};
use openmls_rust_crypto::OpenMlsRustCrypto;

#[derive(Args, Clone)]
pub struct MlsOpts {
    /// Room sizes to measure.
    #[arg(long, value_delimiter = ',', default_value = "100,1000")]
    pub members: Vec<usize>,
    /// Update commits timed at each size.
    #[arg(long, default_value_t = 50)]
    pub commits: usize,
}

/// Everyone is a member with the device they joined with.
struct Everyone;

impl Roster for Everyone {
    fn certificate(&self, user: &str, device: &[u8]) -> Option<&[u8]> {
        let certs = CERTS.get()?;
        certs
            .lock()
            .ok()?
            .get(&(user.to_owned(), device.to_vec()))
            .copied()
    }
}

/// Every device's certificate, leaked: the bench's registry of devices.
type Certs = std::collections::HashMap<(String, Vec<u8>), &'static [u8]>;
static CERTS: std::sync::OnceLock<std::sync::Mutex<Certs>> = std::sync::OnceLock::new();

fn register(device: &Device) {
    let certs = CERTS.get_or_init(Default::default);
    let cert: &'static [u8] = Box::leak(device.certificate.clone().into_boxed_slice());
    certs
        .lock()
        .expect("not poisoned")
        .insert((device.user.clone(), device.device_id.to_vec()), cert);
}

fn me(device: &Device) -> Committer<'_> {
    Committer {
        user: &device.user,
        device: &device.device_id,
        certificate: &device.certificate,
    }
}

pub fn run(opts: &MlsOpts) -> Result<bool, String> {
    for &n in &opts.members {
        measure(n.max(2), opts.commits)?;
    }
    Ok(true)
}

fn measure(members: usize, commits: usize) -> Result<(), String> {
    let e = |e: &dyn std::fmt::Debug| format!("{e:?}");
    // Certificates carry a 256-byte placeholder signature (an RSA-2048 one's
    // size): the DS never verifies RSA, it compares certificates.
    let sign = |_: &[u8]| vec![7u8; 256];
    let creator = Device::new("user0", sign);
    register(&creator);
    let provider = OpenMlsRustCrypto::default();
    let (_, objects) = creator
        .create_group(&provider, e2ee_chat::crypto::random_bytes())
        .map_err(|x| e(&x))?;
    let mut room = RoomGroup::create(&objects.group_info, &objects.ratchet_tree, me(&creator))
        .map_err(|x| e(&x))?;
    let mut info = objects.group_info;
    let started = Instant::now();
    let mut last = None;
    let mut join_time = Duration::ZERO;
    let mut join_bytes = 0;
    for i in 1..members {
        let device = Device::new(&format!("user{i}"), sign);
        register(&device);
        let provider = OpenMlsRustCrypto::default();
        let t = Instant::now();
        let (group, join) = device
            .join_external(&provider, &info, &room.ratchet_tree())
            .map_err(|x| e(&x))?;
        join_time = t.elapsed();
        join_bytes = join.commit.len();
        room.commit(&join.commit, &join.group_info, me(&device), &Everyone)
            .map_err(|x| e(&x))?;
        info = join.group_info;
        last = Some((device, provider, group));
    }
    let build = started.elapsed();
    let (device, provider, mut group) = last.expect("two members at least");

    // Per commit, as a room that loads its row does it: decode, check and
    // merge, encode.
    let mut ds = Duration::ZERO;
    let mut commit_bytes = 0;
    for _ in 0..commits {
        let objects = device
            .commit(&provider, &mut group, &[])
            .map_err(|x| e(&x))?;
        commit_bytes = objects.commit.len();
        let state = room.state();
        let t = Instant::now();
        let mut loaded = RoomGroup::load(&state, room.group_id()).map_err(|x| e(&x))?;
        let accepted = loaded
            .commit(&objects.commit, &objects.group_info, me(&device), &Everyone)
            .map_err(|x| e(&x))?;
        std::hint::black_box(accepted.state.len());
        ds += t.elapsed();
        room = loaded;
        group.merge_pending_commit(&provider).map_err(|x| e(&x))?;
        info = objects.group_info;
    }
    // Only the check and merge, on a group already in memory (a room actor).
    let mut in_memory = Duration::ZERO;
    for _ in 0..commits {
        let objects = device
            .commit(&provider, &mut group, &[])
            .map_err(|x| e(&x))?;
        let t = Instant::now();
        let accepted = room
            .commit(&objects.commit, &objects.group_info, me(&device), &Everyone)
            .map_err(|x| e(&x))?;
        std::hint::black_box(accepted.state.len());
        in_memory += t.elapsed();
        group.merge_pending_commit(&provider).map_err(|x| e(&x))?;
        info = objects.group_info;
    }
    let text = vec![b'x'; 200];
    let message = device
        .encrypt(&provider, &mut group, &text)
        .map_err(|x| e(&x))?;
    let t = Instant::now();
    for _ in 0..1000 {
        std::hint::black_box(e2ee_chat::mls::message_epoch(&message, room.group_id()).ok());
    }
    let header = t.elapsed() / 1000;

    let state = room.state().len();
    let tree = room.ratchet_tree().len();
    println!(
        "mls: {members} members (built in {:.1} s)",
        build.as_secs_f64()
    );
    println!(
        "mls:   public state row {state} B ({:.0} B/member); tree {tree} B ({:.0} B/member); GroupInfo {} B",
        state as f64 / members as f64,
        tree as f64 / members as f64,
        info.len()
    );
    println!(
        "mls:   200-byte text: {} B PrivateMessage; header read {:.1} µs",
        message.len(),
        header.as_secs_f64() * 1e6
    );
    println!(
        "mls:   DS per commit: {:.2} ms load+check+merge+save, {:.2} ms in memory (check+merge+save); update commit {commit_bytes} B",
        ds.as_secs_f64() * 1e3 / commits as f64,
        in_memory.as_secs_f64() * 1e3 / commits as f64
    );
    println!(
        "mls:   device external join at {} members: {:.1} ms; external commit {join_bytes} B",
        members - 1,
        join_time.as_secs_f64() * 1e3
    );
    Ok(())
}
