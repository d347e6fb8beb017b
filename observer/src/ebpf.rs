//! Loading, configuring and attaching the kernel programs, and reading their
//! maps. Map and program names here are the contract with `observer-ebpf`.

use std::{
    fs::File,
    os::fd::{AsFd as _, OwnedFd},
    path::{Path, PathBuf},
    sync::Arc,
};

use aya::{
    Ebpf, EbpfLoader, include_bytes_aligned,
    maps::{Array, HashMap, LpmTrie, MapData, MapError, PerCpuArray, RingBuf, lpm_trie::Key},
    programs::{
        CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, Program, ProgramError, ProgramFd,
        links::{FdLink, PinnedLink},
    },
};
use aya_obj::generated::bpf_attach_type;
use observer_common::{
    config::Endpoint,
    counters::{BYTE_ENTRIES, CONNECTION_ENTRIES, STAT_ENTRIES, Stat},
    flow::{FILTER_SLOTS, flow_count},
    policy::{POLICY_ENTRIES, SLOT_ANY_ENFORCED, VIOLATION_ENTRIES},
};

use crate::{config::Settings, flows::FlowTable, mapped::MappedArray, pin, policy::Policy, roles};

/// The kernel object built by `build.rs`.
static OBJECT: &[u8] = include_bytes_aligned!(concat!(env!("OUT_DIR"), "/observer"));

/// Where a program attaches on the cgroup.
#[derive(Clone, Copy, Debug)]
pub enum Hook {
    /// A `cgroup_skb` program (packets).
    Skb(CgroupSkbAttachType),
    /// A `cgroup/connect4|6` program (aya takes its attach type from its
    /// section; this one is what a pinned link must say).
    Connect(bpf_attach_type),
}

impl Hook {
    /// The kernel's attach type of the hook.
    pub const fn attach_type(self) -> bpf_attach_type {
        match self {
            Self::Skb(CgroupSkbAttachType::Ingress) => bpf_attach_type::BPF_CGROUP_INET_INGRESS,
            Self::Skb(CgroupSkbAttachType::Egress) => bpf_attach_type::BPF_CGROUP_INET_EGRESS,
            Self::Connect(t) => t,
        }
    }
}

/// The programs and their hooks.
pub const PROGRAMS: [(&str, Hook); 4] = [
    ("ingress", Hook::Skb(CgroupSkbAttachType::Ingress)),
    ("egress", Hook::Skb(CgroupSkbAttachType::Egress)),
    (
        "connect4",
        Hook::Connect(bpf_attach_type::BPF_CGROUP_INET4_CONNECT),
    ),
    (
        "connect6",
        Hook::Connect(bpf_attach_type::BPF_CGROUP_INET6_CONNECT),
    ),
];

/// The maps whose capacity is `--flow-table-capacity`.
const FLOW_TABLES: [&str; 2] = ["FLOWS", "HALF_OPEN"];

/// The map whose capacity is `--role-trie-capacity`.
const ROLE_TRIE: &str = "ROLES";

/// The shape this build gives each of [`pin::STATE_MAPS`], as the kernel
/// object declares it (with `capacity` for the flow tables): what a pinned
/// map must be to be adopted.
pub fn state_map_shapes(
    capacity: u32,
) -> Result<[pin::Shape; pin::STATE_MAPS.len()], DatapathError> {
    let object = aya_obj::Object::parse(OBJECT)
        .map_err(|e| DatapathError::Object(aya::EbpfError::ParseError(e)))?;
    let mut shapes = [pin::Shape::default(); pin::STATE_MAPS.len()];
    for (shape, name) in shapes.iter_mut().zip(pin::STATE_MAPS) {
        let map = object.maps.get(name).ok_or_else(|| missing_map(name))?;
        *shape = pin::Shape {
            map_type: map.map_type(),
            key_size: map.key_size(),
            value_size: map.value_size(),
            max_entries: if FLOW_TABLES.contains(&name) {
                capacity
            } else {
                map.max_entries()
            },
            flags: map.map_flags(),
        };
    }
    Ok(shapes)
}

/// A failure to load, configure or attach, naming the map or program.
#[derive(Debug, thiserror::Error)]
pub enum DatapathError {
    /// The object could not be loaded (maps created, relocations applied).
    #[error("cannot load the kernel object (is this root, or CAP_BPF + CAP_PERFMON?): {0}")]
    Object(#[source] aya::EbpfError),
    /// A map is missing or has an unexpected type.
    #[error("map {name}: {source}")]
    Map {
        /// The map.
        name: &'static str,
        /// Why.
        source: MapError,
    },
    /// A map cannot be mapped into the agent's memory.
    #[error("cannot mmap map {name}: {source}")]
    MapMemory {
        /// The map.
        name: &'static str,
        /// Why.
        source: std::io::Error,
    },
    /// A program is missing, rejected by the verifier, or cannot attach.
    #[error("program {name}: {source}")]
    Program {
        /// The program.
        name: &'static str,
        /// Why.
        source: ProgramError,
    },
    /// The pin directory, or a pin in it, cannot be used or is not trusted.
    #[error(transparent)]
    Pins(#[from] pin::PinError),
    /// A pin cannot be made or used.
    #[error("--pin-dir {path}: {source}")]
    Pin {
        /// The directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
    /// The programs' trace (`--kernel-log`) cannot be read.
    #[error("cannot read the kernel programs' trace (map AYA_LOGS): {0}")]
    Trace(#[source] aya_log::Error),
    /// The addresses the flags give do not fit in an address map.
    #[error(
        "{unwritten} entries of map {map} (from --control-plane, --node-ip, --pod-cidr, \
         --apiserver, --apiserver-vip) cannot be written: {error}"
    )]
    Addresses {
        /// The map, as [`Unwritten::MAPS`] names it.
        map: &'static str,
        /// How many entries could not be written.
        unwritten: u64,
        /// The kernel's first refusal.
        error: String,
    },
    /// The cgroup cannot be opened.
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        /// The cgroup directory.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

fn map_err(name: &'static str) -> impl FnOnce(MapError) -> DatapathError {
    move |source| DatapathError::Map { name, source }
}

fn prog_err(name: &'static str) -> impl FnOnce(ProgramError) -> DatapathError {
    move |source| DatapathError::Program { name, source }
}

/// The loaded programs and their maps. Dropping it detaches the programs,
/// unless their links are pinned (see [`crate::pin`]).
#[derive(Debug)]
pub struct Datapath {
    ebpf: Ebpf,
    pin_dir: Option<PathBuf>,
    /// Links pinned by this process (held so a failed start can undo them).
    pinned: Vec<PinnedLink>,
}

/// How [`Datapath::attach`] attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attachment {
    /// New links (pinned if pinning is on).
    New,
    /// The pinned links of a previous agent, now running these programs.
    Adopted,
}

/// What [`Datapath::load`] hands out: the programs, and the maps that
/// different parts of the agent own.
pub struct Loaded {
    /// The programs (attach, test runs); dropping it detaches them.
    pub datapath: Datapath,
    /// Counters, for the metrics endpoint.
    pub counters: Counters,
    /// The flow table, for idle expiry.
    pub flows: FlowTable,
    /// Violation events, for the event printer.
    pub events: RingBuf<MapData>,
    /// Request-head chunks (`observer_common::head`), for the event printer.
    pub heads: RingBuf<MapData>,
    /// The address maps, for discovery.
    pub addresses: Addresses,
    /// The processes of the apiserver running on this node, for
    /// [`crate::local_apiserver`].
    pub apiserver_tasks: ApiserverTasks,
}

/// The counter maps, shared with the metrics endpoint.
pub struct Counters {
    connections: PerCpuArray<MapData, u64>,
    bytes: PerCpuArray<MapData, u64>,
    stats: PerCpuArray<MapData, u64>,
    violations: PerCpuArray<MapData, u64>,
    /// `FLOW_COUNT`, shared with the flow table's expiry.
    flow_count: Arc<MappedArray>,
    /// Capacity of the flow table.
    pub flow_capacity: u32,
}

impl Datapath {
    /// Loads the object, fills the configuration maps from `settings` and
    /// loads the programs into the kernel (the verifier runs here). Nothing
    /// is attached yet. The counters and the flow table are handed out
    /// separately so that the metrics server and the expiry can own them.
    pub fn load(settings: &Settings) -> Result<Loaded, DatapathError> {
        let mut loader = EbpfLoader::new();
        for name in FLOW_TABLES {
            loader.map_max_entries(name, settings.flow_table_capacity);
        }
        loader.map_max_entries(ROLE_TRIE, settings.role_trie_capacity);
        // Off, the verifier drops the trace from the programs (see
        // observer-ebpf/src/trace.rs).
        let level = settings.kernel_log.level();
        loader.override_global(aya_log::LEVEL, &level, true);
        let pin_paths: Vec<(&str, PathBuf)> = match &settings.pin_dir {
            Some(dir) => {
                pin::prepare(dir)?;
                let shapes = state_map_shapes(settings.flow_table_capacity)?;
                for d in pin::check_maps(dir, &shapes)? {
                    let why = if d.why.is_empty() {
                        "goes with the flow table"
                    } else {
                        &d.why
                    };
                    tracing::warn!(
                        map = d.name,
                        why,
                        "pinned map does not fit this build or configuration: recreated empty"
                    );
                }
                pin::STATE_MAPS
                    .iter()
                    .map(|name| (*name, dir.join(name)))
                    .collect()
            }
            None => Vec::new(),
        };
        for (name, path) in &pin_paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader.load(OBJECT).map_err(DatapathError::Object)?;
        configure(&mut ebpf, settings)?;
        let mut addresses = Addresses::take(&mut ebpf)?;
        let unwritten = addresses.apply(settings);
        if let Some((map, shortfall)) = unwritten
            .by_map()
            .into_iter()
            .find(|(_, s)| s.unwritten > 0 || s.stale > 0)
        {
            return Err(DatapathError::Addresses {
                map,
                unwritten: shortfall.unwritten,
                error: shortfall.error.clone().unwrap_or_default(),
            });
        }
        for (name, _) in PROGRAMS {
            match any_program_mut(&mut ebpf, name)? {
                Program::CgroupSkb(p) => p.load(),
                Program::CgroupSockAddr(p) => p.load(),
                _ => Err(ProgramError::UnexpectedProgramType),
            }
            .map_err(prog_err(name))?;
        }
        let flow_count = Arc::new(take_mapped(
            &mut ebpf,
            "FLOW_COUNT",
            flow_count::WORDS as usize,
        )?);
        let counters = Counters {
            flow_count: flow_count.clone(),
            connections: take(&mut ebpf, "CONNECTIONS")?,
            bytes: take(&mut ebpf, "BYTES")?,
            stats: take(&mut ebpf, "STATS")?,
            violations: take(&mut ebpf, "VIOLATIONS")?,
            flow_capacity: settings.flow_table_capacity,
        };
        let flows = FlowTable::new(
            take(&mut ebpf, "FLOWS")?,
            take(&mut ebpf, "HALF_OPEN")?,
            // Two words per slot: `observer_common::flow::Filter`.
            take_mapped(&mut ebpf, "FLOW_FILTER", 2 * FILTER_SLOTS as usize)?,
            flow_count,
            take_mapped(&mut ebpf, "CLOCK", 1)?,
            settings.flow_table_capacity,
        );
        let events = take(&mut ebpf, "EVENTS")?;
        let heads = take(&mut ebpf, "HEADS")?;
        let apiserver_tasks = ApiserverTasks {
            map: take(&mut ebpf, "APISERVER_TASKS")?,
            current: Vec::new(),
        };
        Ok(Loaded {
            datapath: Self {
                ebpf,
                pin_dir: settings.pin_dir.clone(),
                pinned: Vec::new(),
            },
            counters,
            flows,
            events,
            heads,
            addresses,
            apiserver_tasks,
        })
    }

    /// Attaches both programs to `cgroup`, or, when a previous agent left
    /// pinned links, swaps these programs into them (atomically, per hook).
    /// On failure, nothing this call attached stays attached.
    ///
    /// Every pinned link is checked before any is used: one that is not a
    /// cgroup link of its program's hook on `cgroup` is refused
    /// ([`pin::check_link`]), and nothing is attached.
    ///
    /// With `carry`, the address view of the programs in the pinned links
    /// (the previous agent's, which discovery wrote) and the processes
    /// they took for the local apiserver are copied into `carry`'s maps
    /// before the new programs replace them: until discovery's first view,
    /// addresses only discovery knows stay on their paths, and the local
    /// apiserver stays the control plane ([`Addresses::carry_over`],
    /// [`ApiserverTasks::carry_over`]).
    pub fn attach(
        &mut self,
        cgroup: &Path,
        carry: Option<Carry<'_>>,
    ) -> Result<Attachment, DatapathError> {
        let file = File::open(cgroup).map_err(|source| DatapathError::Cgroup {
            path: cgroup.display().to_string(),
            source,
        })?;
        let mut pinned: Vec<Option<OwnedFd>> = Vec::new();
        for (name, hook) in PROGRAMS {
            pinned.push(match &self.pin_dir {
                Some(dir) => pin::check_link(dir, name, hook.attach_type(), &file, cgroup)?,
                None => None,
            });
        }
        if let (Some(carry), Some(link)) = (carry, pinned.iter().flatten().next()) {
            match previous_view(link) {
                Ok(view) => {
                    carry.addresses.carry_over(&view);
                    carry.tasks.carry_over(&view);
                }
                // Not a reason to stop: discovery writes its view soon.
                Err(e) => tracing::warn!(
                    "cannot read the previous programs' addresses ({e}): until discovery's first view, only the configured addresses are on their paths"
                ),
            }
        }
        let mut how = Attachment::New;
        for ((name, hook), link) in PROGRAMS.into_iter().zip(pinned) {
            let link_pin = self.pin_dir.as_ref().map(|d| pin::link_path(d, name));
            let result = match (link, &link_pin) {
                (Some(link), Some(path)) => self
                    .adopt(name, path, &link)
                    .map(|()| how = Attachment::Adopted),
                _ => self.attach_new(name, hook, &file, link_pin.as_deref()),
            };
            if let Err(e) = result {
                self.undo();
                return Err(e);
            }
        }
        Ok(how)
    }

    /// Runs program `name` in `link`, pinned at `path` (checked).
    fn adopt(
        &mut self,
        name: &'static str,
        path: &Path,
        link: &OwnedFd,
    ) -> Result<(), DatapathError> {
        let prog = any_program_mut(&mut self.ebpf, name)?;
        let prog_fd = prog.fd().map_err(prog_err(name))?.as_fd();
        pin::link_update(link.as_fd(), prog_fd).map_err(|source| DatapathError::Pin {
            path: path.display().to_string(),
            source,
        })
    }

    fn attach_new(
        &mut self,
        name: &'static str,
        hook: Hook,
        cgroup: &File,
        pin_path: Option<&Path>,
    ) -> Result<(), DatapathError> {
        // On 5.7+ aya attaches through a bpf_link, which always coexists
        // with other programs on the cgroup; the kernel refuses any flag
        // there, so "Single" (no flag) is the right mode, not AllowMultiple.
        let mode = CgroupAttachMode::Single;
        let link: FdLink = match (any_program_mut(&mut self.ebpf, name)?, hook) {
            (Program::CgroupSkb(p), Hook::Skb(attach_type)) => {
                let id = p
                    .attach(cgroup, attach_type, mode)
                    .map_err(prog_err(name))?;
                if pin_path.is_none() {
                    return Ok(());
                }
                let link = p.take_link(id).map_err(prog_err(name))?;
                FdLink::try_from(link).map_err(|e| self.pin_error(pin_path, &e))?
            }
            (Program::CgroupSockAddr(p), Hook::Connect(_)) => {
                let id = p.attach(cgroup, mode).map_err(prog_err(name))?;
                if pin_path.is_none() {
                    return Ok(());
                }
                let link = p.take_link(id).map_err(prog_err(name))?;
                FdLink::try_from(link).map_err(|e| self.pin_error(pin_path, &e))?
            }
            _ => {
                return Err(DatapathError::Program {
                    name,
                    source: ProgramError::UnexpectedProgramType,
                });
            }
        };
        let path = pin_path.expect("checked above");
        let pinned = link.pin(path).map_err(|e| self.pin_error(Some(path), &e))?;
        self.pinned.push(pinned);
        Ok(())
    }

    fn pin_error(&self, path: Option<&Path>, e: &dyn std::fmt::Display) -> DatapathError {
        DatapathError::Pin {
            path: path.map_or_else(String::new, |p| p.display().to_string()),
            source: std::io::Error::other(e.to_string()),
        }
    }

    /// Detaches what this process attached: unpinned links go with their
    /// programs; links it pinned are unpinned.
    fn undo(&mut self) {
        // The agent exits with the error that brought it here; these are
        // logged so that what stays behind is known.
        for link in self.pinned.drain(..) {
            if let Err(e) = link.unpin() {
                tracing::warn!("undoing the attachment: cannot unpin a link: {e}");
            }
        }
        for (name, _) in PROGRAMS {
            let unloaded = match any_program_mut(&mut self.ebpf, name) {
                Ok(Program::CgroupSkb(p)) => p.unload(),
                Ok(Program::CgroupSockAddr(p)) => p.unload(),
                _ => Ok(()),
            };
            if let Err(e) = unloaded {
                tracing::warn!("undoing the attachment: cannot unload program {name}: {e}");
            }
        }
    }

    /// Loads a program the agent never attaches (the benchmarks' `noop`,
    /// `noop_connect4` and `noop_connect6`).
    pub fn load_extra(&mut self, name: &'static str) -> Result<(), DatapathError> {
        match any_program_mut(&mut self.ebpf, name)? {
            Program::CgroupSkb(p) => p.load().map_err(prog_err(name)),
            Program::CgroupSockAddr(p) => p.load().map_err(prog_err(name)),
            _ => Err(DatapathError::Program {
                name,
                source: ProgramError::UnexpectedProgramType,
            }),
        }
    }

    /// The reader of the programs' trace (`--kernel-log`): each record goes
    /// to `sink` when the reader is flushed.
    pub fn trace<T: log::Log>(&mut self, sink: T) -> Result<aya_log::EbpfLogger<T>, DatapathError> {
        aya_log::EbpfLogger::init_with_logger(&mut self.ebpf, sink).map_err(DatapathError::Trace)
    }

    /// The descriptor of a loaded program of any type, e.g. to attach it
    /// elsewhere (the benchmarks' floor).
    pub fn program_fd(&self, name: &'static str) -> Result<&ProgramFd, DatapathError> {
        self.ebpf
            .program(name)
            .ok_or_else(|| missing_program(name))?
            .fd()
            .map_err(prog_err(name))
    }

    /// A loaded program, e.g. for `BPF_PROG_TEST_RUN` in tests.
    pub fn program(&self, name: &'static str) -> Result<&CgroupSkb, DatapathError> {
        let prog = self
            .ebpf
            .program(name)
            .ok_or_else(|| missing_program(name))?;
        prog.try_into().map_err(prog_err(name))
    }
}

fn any_program_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut Program, DatapathError> {
    ebpf.program_mut(name).ok_or_else(|| missing_program(name))
}

fn missing_program(name: &'static str) -> DatapathError {
    DatapathError::Program {
        name,
        source: ProgramError::InvalidName { name: name.into() },
    }
}

fn missing_map(name: &'static str) -> DatapathError {
    DatapathError::Map {
        name,
        source: MapError::InvalidName { name: name.into() },
    }
}

/// Takes map `name` out of the object, typed: its owner no longer needs
/// the object (counters to the metrics, the flow table to the expiry...).
fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, DatapathError>
where
    T: TryFrom<aya::maps::Map, Error = MapError>,
{
    let map = ebpf.take_map(name).ok_or_else(|| missing_map(name))?;
    T::try_from(map).map_err(map_err(name))
}

/// Takes the `len`-word array `name` out of the object and maps it into our
/// memory.
fn take_mapped(
    ebpf: &mut Ebpf,
    name: &'static str,
    len: usize,
) -> Result<MappedArray, DatapathError> {
    let mmap_err = |source| DatapathError::MapMemory { name, source };
    match ebpf.take_map(name) {
        Some(aya::maps::Map::Array(data)) => MappedArray::new(data, len).map_err(mmap_err),
        Some(_) => Err(mmap_err(std::io::Error::other("not an array"))),
        None => Err(missing_map(name)),
    }
}

fn map_mut<'a>(
    ebpf: &'a mut Ebpf,
    name: &'static str,
) -> Result<&'a mut aya::maps::Map, DatapathError> {
    ebpf.map_mut(name).ok_or_else(|| missing_map(name))
}

/// Writes the settings into the configuration maps.
fn configure(ebpf: &mut Ebpf, settings: &Settings) -> Result<(), DatapathError> {
    let mut ports: Array<_, observer_common::config::Ports> =
        Array::try_from(map_mut(ebpf, "PORTS")?).map_err(map_err("PORTS"))?;
    ports.set(0, settings.ports, 0).map_err(map_err("PORTS"))?;
    set_policy(ebpf, &settings.policy)
}

/// The address maps (roles, apiserver endpoints): written at load and again
/// whenever discovery learns something new.
pub struct Addresses {
    roles: LpmTrie<MapData, observer_common::config::Addr, u32>,
    endpoints: HashMap<MapData, Endpoint, u32>,
    current_roles: Vec<(u32, observer_common::config::Addr)>,
    current_endpoints: Vec<Endpoint>,
}

impl std::fmt::Debug for Addresses {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Addresses")
            .field("roles", &self.current_roles.len())
            .finish_non_exhaustive()
    }
}

/// What one address map did not take of a view.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Shortfall {
    /// Entries of the new view that could not be written (the map is full,
    /// or the kernel refused them).
    pub unwritten: u64,
    /// Entries of the old view that could not be removed.
    pub stale: u64,
    /// The first error, for the log.
    pub error: Option<String>,
}

impl Shortfall {
    fn failed(&mut self, stale: bool, e: &MapError) {
        if stale {
            self.stale += 1;
        } else {
            self.unwritten += 1;
        }
        self.error.get_or_insert_with(|| {
            // The kernel's errno is the source (`bpf_map_update_elem` failed: E2BIG).
            let mut text = e.to_string();
            let mut source = std::error::Error::source(e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            text
        });
    }
}

/// What [`Addresses::apply`] could not write, by map.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Unwritten {
    /// `APISERVERS`: the apiserver endpoints and VIPs.
    pub apiservers: Shortfall,
    /// `ROLES`: the role trie.
    pub roles: Shortfall,
}

impl Unwritten {
    /// The maps' names, as the `map` label of `cp_observer_discovery_overflow`.
    pub const MAPS: [&'static str; 2] = ["apiservers", "roles"];

    /// Each map's shortfall, in the order of [`Self::MAPS`].
    pub fn by_map(&self) -> [(&'static str, &Shortfall); 2] {
        [
            (Self::MAPS[0], &self.apiservers),
            (Self::MAPS[1], &self.roles),
        ]
    }

    /// Whether every map says exactly what was asked.
    pub fn is_complete(&self) -> bool {
        self.by_map()
            .iter()
            .all(|(_, s)| s.unwritten == 0 && s.stale == 0)
    }
}

/// A kernel map [`sync`] writes: keys to values.
trait Table {
    type Key: Eq + std::hash::Hash + Clone;
    type Value: Copy;
    fn insert(&mut self, key: &Self::Key, value: Self::Value) -> Result<(), MapError>;
    fn remove(&mut self, key: &Self::Key) -> Result<(), MapError>;
}

impl Table for LpmTrie<MapData, observer_common::config::Addr, u32> {
    type Key = (u32, observer_common::config::Addr);
    type Value = u32;
    fn insert(&mut self, key: &Self::Key, value: u32) -> Result<(), MapError> {
        LpmTrie::insert(self, &Key::new(key.0, key.1), value, 0)
    }
    fn remove(&mut self, key: &Self::Key) -> Result<(), MapError> {
        LpmTrie::remove(self, &Key::new(key.0, key.1))
    }
}

impl Table for HashMap<MapData, Endpoint, u32> {
    type Key = Endpoint;
    type Value = u32;
    fn insert(&mut self, key: &Endpoint, value: u32) -> Result<(), MapError> {
        HashMap::insert(self, key, value, 0)
    }
    fn remove(&mut self, key: &Endpoint) -> Result<(), MapError> {
        HashMap::remove(self, key)
    }
}

impl Table for HashMap<MapData, u32, u8> {
    type Key = u32;
    type Value = u8;
    fn insert(&mut self, key: &u32, value: u8) -> Result<(), MapError> {
        HashMap::insert(self, key, value, 0)
    }
    fn remove(&mut self, key: &u32) -> Result<(), MapError> {
        HashMap::remove(self, key)
    }
}

/// `APISERVER_TASKS`: the processes (tgids) the kernel programs take for
/// the apiserver running on this node, whose connections are the control
/// plane's (see [`crate::local_apiserver`]).
pub struct ApiserverTasks {
    map: HashMap<MapData, u32, u8>,
    current: Vec<u32>,
}

impl std::fmt::Debug for ApiserverTasks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiserverTasks")
            .field("current", &self.current)
            .finish_non_exhaustive()
    }
}

impl ApiserverTasks {
    /// Makes the map hold exactly `tgids`, as far as it can: the stale
    /// entries leave first, a failed write is counted in the result.
    pub fn sync(&mut self, tgids: &std::collections::BTreeSet<u32>) -> Shortfall {
        let wanted: Vec<(u32, u8)> = tgids.iter().map(|t| (*t, 1)).collect();
        sync(&mut self.map, &mut self.current, &wanted)
    }

    /// How many processes the map holds.
    pub fn len(&self) -> usize {
        self.current.len()
    }

    /// Whether the map holds none.
    pub fn is_empty(&self) -> bool {
        self.current.is_empty()
    }

    /// Adds the processes of `previous` that the map lacks, as entries the
    /// next [`Self::sync`] removes if they are not the apiserver's then.
    pub fn carry_over(&mut self, previous: &View) {
        let mut carried = 0;
        for (tgid, value) in &previous.tasks {
            if self.current.contains(tgid) {
                continue;
            }
            match Table::insert(&mut self.map, tgid, *value) {
                Ok(()) => {
                    self.current.push(*tgid);
                    carried += 1;
                }
                Err(e) => tracing::warn!(
                    tgid,
                    "cannot carry a local apiserver process over into map APISERVER_TASKS: {e}"
                ),
            }
        }
        if carried > 0 {
            tracing::info!(
                processes = ?self.current,
                "carried over the previous programs' local apiserver processes until the endpoints are known"
            );
        }
    }
}

/// Makes `table` hold `wanted` as far as it can, never stopping half-way:
/// first the stale entries (in `current`, not wanted) are removed, which
/// makes room; then every wanted entry is written, in the order given (most
/// important first, so a full map loses the last ones). `current` is left
/// saying what the table holds.
fn sync<T: Table>(
    table: &mut T,
    current: &mut Vec<T::Key>,
    wanted: &[(T::Key, T::Value)],
) -> Shortfall {
    let mut shortfall = Shortfall::default();
    let mut now = Vec::with_capacity(wanted.len());
    // A set, not a scan per entry: 100,000 prefixes (`--role-trie-capacity`)
    // would take 10^10 comparisons.
    let keep: std::collections::HashSet<&T::Key> = wanted.iter().map(|(k, _)| k).collect();
    for old in current.drain(..) {
        if keep.contains(&old) {
            continue;
        }
        if let Err(e) = table.remove(&old) {
            shortfall.failed(true, &e);
            now.push(old);
        }
    }
    for (key, value) in wanted {
        match table.insert(key, *value) {
            Ok(()) => now.push(key.clone()),
            Err(e) => shortfall.failed(false, &e),
        }
    }
    *current = now;
    shortfall
}

/// The address maps' contents of the programs running in a pinned link,
/// and the processes they took for the local apiserver.
#[derive(Debug, Default)]
pub struct View {
    roles: Vec<((u32, observer_common::config::Addr), u32)>,
    endpoints: Vec<(Endpoint, u32)>,
    tasks: Vec<(u32, u8)>,
}

/// What [`Datapath::attach`] fills from the programs it replaces.
#[derive(Debug)]
pub struct Carry<'a> {
    /// The address maps.
    pub addresses: &'a mut Addresses,
    /// The local apiserver's processes.
    pub tasks: &'a mut ApiserverTasks,
}

/// Reads `ROLES`, `APISERVERS` and `APISERVER_TASKS` of the program `link`
/// runs (the link was checked: [`pin::check_link`]).
fn previous_view(link: &OwnedFd) -> Result<View, String> {
    let info = crate::sys::link_info(link.as_fd()).map_err(|e| format!("link info: {e}"))?;
    let program = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .find(|p| p.id() == info.prog_id)
        .ok_or_else(|| format!("program {} is gone", info.prog_id))?;
    let ids = program
        .map_ids()
        .map_err(|e| format!("map ids of program {}: {e}", info.prog_id))?
        .unwrap_or_default();
    let mut view = View::default();
    for id in ids {
        let named = aya::maps::MapInfo::from_id(id)
            .map_err(|e| format!("map {id}: {e}"))?
            .name_as_str()
            .map(str::to_owned);
        let open = || {
            MapData::from_id(id)
                .and_then(aya::maps::Map::from_map_data)
                .map_err(|e| format!("map {id}: {e}"))
        };
        match named.as_deref() {
            Some("ROLES") => {
                let trie: LpmTrie<_, observer_common::config::Addr, u32> =
                    LpmTrie::try_from(open()?).map_err(|e| format!("ROLES: {e}"))?;
                for entry in trie.iter() {
                    let (key, roles) = entry.map_err(|e| format!("ROLES: {e}"))?;
                    view.roles.push(((key.prefix_len(), key.data()), roles));
                }
            }
            Some("APISERVERS") => {
                let map: HashMap<_, Endpoint, u32> =
                    HashMap::try_from(open()?).map_err(|e| format!("APISERVERS: {e}"))?;
                for entry in map.iter() {
                    view.endpoints
                        .push(entry.map_err(|e| format!("APISERVERS: {e}"))?);
                }
            }
            // Programs from before the local apiserver have none.
            Some("APISERVER_TASKS") => {
                let map: HashMap<_, u32, u8> =
                    HashMap::try_from(open()?).map_err(|e| format!("APISERVER_TASKS: {e}"))?;
                for entry in map.iter() {
                    view.tasks
                        .push(entry.map_err(|e| format!("APISERVER_TASKS: {e}"))?);
                }
            }
            _ => {}
        }
    }
    Ok(view)
}

impl Addresses {
    /// Adds the entries of `previous` that the maps lack (what is
    /// configured wins), as entries the next [`Self::apply`] removes if
    /// its view no longer has them.
    pub fn carry_over(&mut self, previous: &View) {
        let (mut roles, mut endpoints) = (0, 0);
        let configured: std::collections::HashSet<_> = self.current_roles.iter().copied().collect();
        for (key, value) in &previous.roles {
            if !configured.contains(key) && Table::insert(&mut self.roles, key, *value).is_ok() {
                self.current_roles.push(*key);
                roles += 1;
            }
        }
        let configured: std::collections::HashSet<_> =
            self.current_endpoints.iter().copied().collect();
        for (key, value) in &previous.endpoints {
            if !configured.contains(key) && Table::insert(&mut self.endpoints, key, *value).is_ok()
            {
                self.current_endpoints.push(*key);
                endpoints += 1;
            }
        }
        tracing::info!(
            roles,
            endpoints,
            "carried over the previous programs' addresses until discovery's first view"
        );
    }

    fn take(ebpf: &mut Ebpf) -> Result<Self, DatapathError> {
        Ok(Self {
            roles: take(ebpf, "ROLES")?,
            endpoints: take(ebpf, "APISERVERS")?,
            current_roles: Vec::new(),
            current_endpoints: Vec::new(),
        })
    }

    /// Makes the maps say what `settings` say, as far as they can hold it:
    /// the apiserver endpoints and VIPs first (the paths to the apiserver
    /// must never go unclassified), then the roles (see
    /// [`roles::role_entries`] for their order). Stale entries go before
    /// new ones are written; a failed write is counted in the result, never
    /// a reason to stop.
    pub fn apply(&mut self, settings: &Settings) -> Unwritten {
        let endpoints: Vec<(Endpoint, u32)> = settings
            .apiservers
            .iter()
            .chain(&settings.apiserver_vips)
            .map(|ep| (Endpoint::from(*ep), 1))
            .collect();
        let apiservers = sync(&mut self.endpoints, &mut self.current_endpoints, &endpoints);
        let roles: Vec<_> = roles::role_entries(settings)
            .into_iter()
            .map(|e| ((e.prefix_len, e.addr), e.roles.0))
            .collect();
        let roles = sync(&mut self.roles, &mut self.current_roles, &roles);
        Unwritten { apiservers, roles }
    }
}

/// Writes `policy` into the table not in force, then makes it the one in
/// force: each packet sees the old policy or the new one, never a mix.
fn set_policy(ebpf: &mut Ebpf, policy: &Policy) -> Result<(), DatapathError> {
    let slot: Array<_, u32> =
        Array::try_from(map_mut(ebpf, "POLICY_SLOT")?).map_err(map_err("POLICY_SLOT"))?;
    let next = (slot.get(&0, 0).map_err(map_err("POLICY_SLOT"))? + 1) & 1;
    let any_enforced = if policy.enforces_anything() {
        SLOT_ANY_ENFORCED
    } else {
        0
    };
    let mut table: Array<_, u32> =
        Array::try_from(map_mut(ebpf, "POLICY")?).map_err(map_err("POLICY"))?;
    for (i, entry) in policy.table().into_iter().enumerate() {
        table
            .set(next * POLICY_ENTRIES as u32 + i as u32, entry, 0)
            .map_err(map_err("POLICY"))?;
    }
    let mut slot: Array<_, u32> =
        Array::try_from(map_mut(ebpf, "POLICY_SLOT")?).map_err(map_err("POLICY_SLOT"))?;
    slot.set(0, next | any_enforced, 0)
        .map_err(map_err("POLICY_SLOT"))
}

impl std::fmt::Debug for Counters {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Counters")
            .field("flow_capacity", &self.flow_capacity)
            .finish_non_exhaustive()
    }
}

impl Counters {
    /// Connection counts, indexed like `observer_common::counters::connection_index`.
    pub fn connections(&self) -> Result<Vec<u64>, MapError> {
        sum_all(&self.connections, CONNECTION_ENTRIES)
    }

    /// Byte counts, indexed like `observer_common::counters::byte_index`.
    pub fn bytes(&self) -> Result<Vec<u64>, MapError> {
        sum_all(&self.bytes, BYTE_ENTRIES)
    }

    /// Violations, indexed like `observer_common::policy::violation_index`.
    pub fn violations(&self) -> Result<Vec<u64>, MapError> {
        sum_all(&self.violations, VIOLATION_ENTRIES)
    }

    /// One datapath health counter.
    pub fn stat(&self, stat: Stat) -> Result<u64, MapError> {
        sum(&self.stats, stat as u32)
    }

    /// Entries in the flow table now: the count the kernel keeps next to
    /// it (pinned with it, so restarts do not change it), one load. It
    /// counts an entry from just before its insertion to just after its
    /// removal, so it may exceed the table by the inserts and removals
    /// under way (and by one for good if an agent is killed between
    /// removing an idle entry and counting it out: `flows::FlowTable::expire`).
    pub fn flow_entries(&self) -> u64 {
        self.flow_count
            .word(flow_count::ENTRIES as usize)
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// All datapath health counters, indexed by [`Stat`].
    pub fn stats(&self) -> Result<Vec<u64>, MapError> {
        sum_all(&self.stats, STAT_ENTRIES)
    }
}

fn sum(map: &PerCpuArray<MapData, u64>, index: u32) -> Result<u64, MapError> {
    Ok(map
        .get(&index, 0)?
        .iter()
        .copied()
        .fold(0u64, u64::wrapping_add))
}

fn sum_all(map: &PerCpuArray<MapData, u64>, n: usize) -> Result<Vec<u64>, MapError> {
    (0..n as u32).map(|i| sum(map, i)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A map of `capacity` entries that refuses a new key when full, as
    /// the kernel's hash and LPM maps do (E2BIG / ENOSPC).
    struct Small {
        capacity: usize,
        entries: Vec<(u32, u32)>,
    }

    impl Table for Small {
        type Key = u32;
        type Value = u32;
        fn insert(&mut self, key: &u32, value: u32) -> Result<(), MapError> {
            if let Some(e) = self.entries.iter_mut().find(|(k, _)| k == key) {
                e.1 = value;
                return Ok(());
            }
            if self.entries.len() == self.capacity {
                return Err(MapError::SyscallError(aya::sys::SyscallError {
                    call: "bpf_map_update_elem",
                    io_error: std::io::Error::from_raw_os_error(7), // E2BIG
                }));
            }
            self.entries.push((*key, value));
            Ok(())
        }
        fn remove(&mut self, key: &u32) -> Result<(), MapError> {
            self.entries.retain(|(k, _)| k != key);
            Ok(())
        }
    }

    fn keys(t: &Small) -> Vec<u32> {
        let mut k: Vec<u32> = t.entries.iter().map(|(k, _)| *k).collect();
        k.sort_unstable();
        k
    }

    #[test]
    fn a_full_map_takes_the_first_entries_and_counts_the_rest() {
        let mut t = Small {
            capacity: 3,
            entries: Vec::new(),
        };
        let mut current = Vec::new();
        let wanted: Vec<(u32, u32)> = (1..=5).map(|k| (k, 0)).collect();
        let s = sync(&mut t, &mut current, &wanted);
        assert_eq!(s.unwritten, 2, "{s:?}");
        assert_eq!(s.stale, 0);
        assert!(
            s.error
                .as_deref()
                .unwrap_or("")
                .contains("bpf_map_update_elem"),
            "{s:?}"
        );
        assert_eq!(
            keys(&t),
            vec![1, 2, 3],
            "the first (most important) ones are in"
        );
        assert_eq!(current, vec![1, 2, 3], "current says what the map holds");
    }

    #[test]
    fn stale_entries_leave_first_and_make_room() {
        let mut t = Small {
            capacity: 3,
            entries: Vec::new(),
        };
        let mut current = Vec::new();
        let s = sync(&mut t, &mut current, &[(1, 0), (2, 0), (3, 0)]);
        assert_eq!(s, Shortfall::default());
        // A new view of three: 2 and 3 go, 4 and 5 come; a map that wrote
        // before removing would have been full at 4.
        let s = sync(&mut t, &mut current, &[(1, 1), (4, 0), (5, 0)]);
        assert_eq!(s, Shortfall::default());
        assert_eq!(keys(&t), vec![1, 4, 5]);
        assert_eq!(
            t.entries.iter().find(|(k, _)| *k == 1).unwrap().1,
            1,
            "updated in place"
        );
        // An overflowing view does not stop before the stale entries left
        // or the later entries that fit.
        let mut t2 = Small {
            capacity: 2,
            entries: Vec::new(),
        };
        let mut current2 = Vec::new();
        sync(&mut t2, &mut current2, &[(7, 0), (8, 0)]);
        let s = sync(&mut t2, &mut current2, &[(1, 0), (2, 0), (3, 0)]);
        assert_eq!(s.unwritten, 1);
        assert_eq!(
            keys(&t2),
            vec![1, 2],
            "7 and 8 are gone, the first two are in"
        );
    }
}
