//! Verification of one tree state (SPEC.md §7.2): the policy, every environment spec and every chain,
//! judged against the policy the tree holds. Input is an in-memory [`Snapshot`] that a reader (work
//! tree or Git tree) builds; output is a [`VerifiedTree`] or every problem found.
//!
//! Owns: the layout rules and the order of checks for a tree. Must not read files, Git or the clock;
//! must not judge transitions between trees (that is the history verifier's job).

use crate::check::Check;
pub use crate::check::Problem;
use crate::crypto::Blake3Digest;
use crate::document::{DocError, Document, ForeignSignatures, Payload, SignedBy};
use crate::freshness::{check_timestamp, MAX_VALIDITY_LIMIT, MIN_VALIDITY_LIMIT, TIMESTAMP_PATH};
use crate::time::Timestamp;
use crate::types::{Entry, EnvName, Environment, LedgerId, Policy, Role, TimestampDoc};
pub use crate::types::{Layout, BUCKET};
use std::collections::{BTreeMap, BTreeSet};

/// Path of the policy document.
pub const POLICY_PATH: &str = "trust/policy.json";
/// The directories whose whole content the format owns.
pub const OWNED_DIRS: [&str; 3] = ["trust", "environments", "ledger"];

/// What a reader found at a path. Readers stop reading a file past [`MAX_READ`] bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Node {
    File(Vec<u8>),
    TooLarge {
        size: u64,
    },
    Symlink,
    /// Anything else that is not a directory: a submodule, a socket, a device.
    Other(String),
}

/// The most a reader needs to load of any one file: one byte past the largest document limit.
pub const MAX_READ: u64 = (1 << 20) + 1;

/// Every non-directory node under the owned directories, by path bytes relative to the repository
/// root with `/` separators (paths are bytes because Git and Unix names need not be UTF-8).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Snapshot {
    pub nodes: BTreeMap<Vec<u8>, Node>,
}

impl Snapshot {
    pub fn insert_file(&mut self, path: &str, bytes: Vec<u8>) {
        self.nodes.insert(path.as_bytes().to_vec(), Node::File(bytes));
    }
}

/// A tree every check passed on.
#[derive(Clone, Debug)]
pub struct VerifiedTree {
    pub policy: Document<Policy>,
    pub environments: BTreeMap<EnvName, VerifiedEnv>,
    /// `trust/timestamp.json`, when the tree has one (revision 4, SPEC.md §6.4).
    pub timestamp: Option<Document<TimestampDoc>>,
}

#[derive(Clone, Debug)]
pub struct VerifiedEnv {
    pub spec: Document<Environment>,
    /// Entries in seq order; the last one is the environment's target.
    pub entries: Vec<VerifiedEntry>,
}

impl VerifiedEnv {
    pub fn tip(&self) -> Option<&VerifiedEntry> {
        self.entries.last()
    }
}

#[derive(Clone, Debug)]
pub struct VerifiedEntry {
    pub doc: Document<Entry>,
    pub signed_by: SignedBy,
}

/// Where a path sits in the layout (SPEC.md §2).
#[derive(Debug, PartialEq, Eq)]
pub enum LayoutPath {
    Policy,
    Timestamp,
    Environment(EnvName),
    Entry(EnvName, u64),
}

/// Parses a path against the layout: `trust/policy.json`, `environments/<env>.json`,
/// `ledger/<env>/<seq>.json` or (revision 5) `ledger/<env>/<seq / 1000>/<seq>.json`, with numbers in
/// canonical decimal (no sign, no leading zero). Which of the two entry forms a tree may use is the
/// policy's call ([`Layout::of_entry_path`], checked in V4 and by the history verifier).
pub fn classify(path: &str) -> Option<LayoutPath> {
    let parts: Vec<&str> = path.split('/').collect();
    match parts.as_slice() {
        ["trust", "policy.json"] => Some(LayoutPath::Policy),
        ["trust", "timestamp.json"] => Some(LayoutPath::Timestamp),
        ["environments", file] => file.strip_suffix(".json")?.parse().ok().map(LayoutPath::Environment),
        ["ledger", env, file] => Some(LayoutPath::Entry(env.parse().ok()?, seq_of(file)?)),
        ["ledger", env, bucket, file] => {
            let seq = seq_of(file)?;
            let canonical = *bucket == "0" || (canonical_number(bucket) && bucket.len() <= 12);
            if !canonical || bucket.parse::<u64>().ok()? != seq / BUCKET {
                return None;
            }
            Some(LayoutPath::Entry(env.parse().ok()?, seq))
        }
        _ => None,
    }
}

/// `<seq>.json` with `<seq>` 1 to 15 digits in canonical decimal.
fn seq_of(file: &str) -> Option<u64> {
    let digits = file.strip_suffix(".json")?;
    digits.parse::<u64>().ok().filter(|_| digits.len() <= 15 && canonical_number(digits))
}

/// Digits only, at least one, and no leading zero.
fn canonical_number(digits: &str) -> bool {
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) && !digits.starts_with('0')
}

/// Why a path under the owned directories is refused (T2).
pub const NOT_IN_LAYOUT: &str = "does not match the layout (trust/policy.json, trust/timestamp.json, \
                                 environments/<env>.json, ledger/<env>/<seq>.json or, with ledger_layout \
                                 buckets, ledger/<env>/<seq / 1000>/<seq>.json)";

/// Why an entry in the other form than the policy's layout is refused (T2).
pub fn wrong_layout(layout: Layout, env: &EnvName, seq: u64) -> String {
    match layout {
        Layout::Flat => format!(
            "entries are at ledger/<env>/<seq>.json unless the policy's ledger_layout says buckets: this one \
             belongs at {}",
            layout.entry_path(env, seq)
        ),
        Layout::Buckets => {
            format!("the policy's ledger_layout is buckets, so this entry belongs at {}", layout.entry_path(env, seq))
        }
    }
}

/// The path of entry `seq` of `env` in the flat layout (revision 1; the default).
pub fn entry_path(env: &EnvName, seq: u64) -> String {
    Layout::Flat.entry_path(env, seq)
}

pub fn environment_path(env: &EnvName) -> String {
    format!("environments/{env}.json")
}

struct Problems(Vec<Problem>);

impl Problems {
    fn add(&mut self, path: &str, check: Check, reason: impl Into<String>) {
        self.0.push(Problem { path: path.to_owned(), check, reason: reason.into(), cause: None });
    }

    fn doc(&mut self, path: &str, e: DocError) {
        self.0.push(e.at(path));
    }

    /// Problems in path order, then check order (SPEC.md §7.2).
    fn sorted(mut self) -> Vec<Problem> {
        self.0.sort_by(|a, b| (a.path.as_str(), a.check).cmp(&(b.path.as_str(), b.check)));
        self.0
    }
}

/// Parses a document and checks its ledger id (D1-D6).
fn parse_in_ledger<T: Payload>(
    node: &Node,
    ledger: Option<&LedgerId>,
    payload_ledger: fn(&T) -> &LedgerId,
) -> Result<Document<T>, DocError> {
    let bytes = match node {
        Node::File(bytes) => bytes,
        Node::TooLarge { size } => {
            return Err(DocError::new(
                Check::D1,
                format!("{size} bytes, more than the {} bytes allowed", T::KIND.max_size()),
            ))
        }
        Node::Symlink | Node::Other(_) => return Err(DocError::new(Check::T1, "not a regular file")),
    };
    let doc = Document::<T>::parse(bytes)?;
    if let Some(expected) = ledger {
        let got = payload_ledger(&doc.payload);
        if got != expected {
            return Err(DocError::new(
                Check::D6,
                format!("payload names ledger {got}, the policy's ledger is {expected}"),
            ));
        }
    }
    Ok(doc)
}

/// When expiry is judged (checks P3 and E6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// Documents that expired at or before this time are refused: what anything that acts does.
    JudgedAt(Timestamp),
    /// Expiry is not judged. Only for tools that append to a ledger: a release or a new policy is how
    /// an expired tip or policy is renewed, so expiry must not block writing one.
    NotJudged,
}

impl Expiry {
    fn expired(self, at: Option<Timestamp>) -> Option<Timestamp> {
        match self {
            Expiry::JudgedAt(now) => at.filter(|t| *t <= now),
            Expiry::NotJudged => None,
        }
    }
}

/// Verifies a whole tree (SPEC.md §7.2) against the policy it contains, at time `now`.
/// Returns every problem found, in path order, when any check fails.
pub fn verify_snapshot(snapshot: &Snapshot, now: Timestamp) -> Result<VerifiedTree, Vec<Problem>> {
    verify_snapshot_with(snapshot, Expiry::JudgedAt(now))
}

/// [`verify_snapshot`] with a choice about expiry; see [`Expiry::NotJudged`] for the one use of it.
pub fn verify_snapshot_with(snapshot: &Snapshot, expiry: Expiry) -> Result<VerifiedTree, Vec<Problem>> {
    verify_snapshot_using(snapshot, expiry, &crate::document::Direct)
}

/// [`verify_snapshot_with`], asking `sigs` whether each entry's signatures verify: a caller that has
/// verified them ahead of time (on all cores) hands in what it found. The verdict is the same for any
/// `sigs` that answers as [`crate::document::Direct`] does.
pub fn verify_snapshot_using(
    snapshot: &Snapshot,
    expiry: Expiry,
    sigs: &impl crate::document::SignatureCheck,
) -> Result<VerifiedTree, Vec<Problem>> {
    let mut problems = Problems(Vec::new());

    // T1, T2: sort every node into the layout.
    let mut policy_node = None;
    let mut timestamp_node = None;
    let mut spec_nodes: BTreeMap<EnvName, (String, &Node)> = BTreeMap::new();
    let mut entry_candidates: Vec<(EnvName, u64, String, &Node)> = Vec::new();
    for (raw, node) in &snapshot.nodes {
        let Ok(path) = std::str::from_utf8(raw) else {
            problems.add(&String::from_utf8_lossy(raw), Check::T2, "path is not valid UTF-8");
            continue;
        };
        match node {
            Node::Symlink => {
                problems.add(path, Check::T1, "is a symbolic link");
                continue;
            }
            Node::Other(what) => {
                problems.add(path, Check::T1, format!("is a {what}, not a regular file"));
                continue;
            }
            Node::File(_) | Node::TooLarge { .. } => {}
        }
        match classify(path) {
            Some(LayoutPath::Policy) => policy_node = Some(node),
            Some(LayoutPath::Timestamp) => timestamp_node = Some(node),
            Some(LayoutPath::Environment(env)) => {
                spec_nodes.insert(env, (path.to_owned(), node));
            }
            Some(LayoutPath::Entry(env, seq)) => entry_candidates.push((env, seq, path.to_owned(), node)),
            None => problems.add(path, Check::T2, NOT_IN_LAYOUT),
        }
    }

    // T3, D1-D6, P1-P4: without a trusted policy nothing else can be judged.
    let Some(policy_node) = policy_node else {
        problems.add(POLICY_PATH, Check::T3, "missing");
        return Err(problems.sorted());
    };
    let policy = match parse_in_ledger::<Policy>(policy_node, None, |p| &p.ledger)
        .and_then(|doc| check_policy(&doc, expiry).map(|_| doc))
    {
        Ok(doc) => doc,
        Err(e) => {
            problems.doc(POLICY_PATH, e);
            return Err(problems.sorted());
        }
    };
    let ledger = &policy.payload.ledger;

    // F1: the timestamp, when there is one. Its expiry is judged by whoever acts (F3), not here.
    let timestamp = timestamp_node.and_then(|node| {
        match parse_in_ledger::<TimestampDoc>(node, Some(ledger), |t| &t.ledger)
            .and_then(|doc| check_timestamp(&policy.payload, &doc).map(|_| doc))
        {
            Ok(doc) => Some(doc),
            Err(e) => {
                problems.doc(TIMESTAMP_PATH, e);
                None
            }
        }
    });

    // N1-N4: environment specs.
    let mut specs = BTreeMap::new();
    for (env, (path, node)) in &spec_nodes {
        let result = parse_in_ledger::<Environment>(node, Some(ledger), |e| &e.ledger)
            .and_then(|doc| check_environment(&policy.payload, env, &doc).map(|_| doc));
        match result {
            Ok(doc) => {
                specs.insert(env.clone(), doc);
            }
            Err(e) => problems.doc(path, e),
        }
    }
    for env in policy.payload.environments.keys() {
        if !spec_nodes.contains_key(env) {
            problems.add(
                &environment_path(env),
                Check::N2,
                format!("environment {env} is declared in {POLICY_PATH} but has no spec"),
            );
        }
    }

    // T2: entries in the other layout than the policy's take no further part (revision 5).
    let layout = policy.payload.layout();
    let mut entry_nodes: BTreeMap<EnvName, BTreeMap<u64, (String, &Node)>> = BTreeMap::new();
    for (env, seq, path, node) in entry_candidates {
        if Layout::of_entry_path(&path) == layout {
            entry_nodes.entry(env).or_default().insert(seq, (path, node));
        } else {
            problems.add(&path, Check::T2, wrong_layout(layout, &env, seq));
        }
    }

    // Every entry is parsed up front on all cores (parsing is most of a large tree's cost and each
    // file's parse stands alone); the chains are then judged in order below, as if parsed there.
    let mut parsed = parse_entries(&entry_nodes, ledger).into_iter();

    // E1-E6: chains.
    let mut chains: BTreeMap<EnvName, Vec<VerifiedEntry>> = BTreeMap::new();
    let any_listed_key = Role { keys: policy.payload.keys.keys().copied().collect(), threshold: 0 };
    for (env, files) in &entry_nodes {
        let Some(role) = policy.payload.env_role(env) else {
            for (path, _) in files.values() {
                problems.add(path, Check::E1, format!("environment {env} is not declared in {POLICY_PATH}"));
                parsed.next();
            }
            continue;
        };
        let mut chain = Vec::new();
        let mut link = Link::Expect(Blake3Digest::ZERO);
        let mut previous_seq = 0;
        for (index, (seq, (path, _))) in files.iter().enumerate() {
            if *seq != previous_seq + 1 {
                let missing = if *seq == previous_seq + 2 {
                    format!("entry {} of {env} is missing", previous_seq + 1)
                } else {
                    format!("entries {}..={} of {env} are missing", previous_seq + 1, seq - 1)
                };
                problems.add(path, Check::E3, format!("gap in the chain: {missing}"));
                link = Link::AfterGap;
            }
            previous_seq = *seq;
            let doc = match parsed.next().expect("one parse per entry file, in the same order") {
                Ok(doc) => doc,
                Err(e) => {
                    problems.doc(path, e);
                    link = Link::Broken;
                    continue;
                }
            };
            // The tip is judged against the environment's role. Earlier entries are covered by the tip
            // through `prev`; here their signatures by keys the policy lists must still verify, while who
            // was authorised when they were added is the history verifier's question (SPEC.md §7.2).
            let is_tip = index + 1 == files.len();
            let (judged_role, foreign) =
                if is_tip { (role, ForeignSignatures::Refuse) } else { (&any_listed_key, ForeignSignatures::Skip) };
            let checked = check_entry_position(&doc.payload, env, *seq, link).and_then(|()| {
                doc.check_role_with(&policy.payload, judged_role, foreign, sigs).map_err(|e| e.caused(Check::E5))
            });
            link = Link::Expect(doc.hash());
            match checked {
                Ok(signed_by) => chain.push(VerifiedEntry { doc, signed_by }),
                Err(e) => problems.doc(path, e),
            }
        }
        if let Some(tip) = chain.last().filter(|_| chain.len() == files.len()) {
            if let Some(expires) = expiry.expired(tip.doc.payload.expires_at) {
                problems.add(
                    &layout.entry_path(env, tip.doc.payload.seq),
                    Check::E6,
                    format!("the tip entry expired at {expires}; nothing expired is acted on"),
                );
            }
        }
        chains.insert(env.clone(), chain);
    }

    if !problems.0.is_empty() {
        return Err(problems.sorted());
    }
    let environments = specs
        .into_iter()
        .map(|(env, spec)| {
            let entries = chains.remove(&env).unwrap_or_default();
            (env, VerifiedEnv { spec, entries })
        })
        .collect();
    Ok(VerifiedTree { policy, environments, timestamp })
}

/// [`parse_in_ledger`] of every entry file, in the order of `entry_nodes` (environment, then seq),
/// spread over the available cores.
fn parse_entries(
    entry_nodes: &BTreeMap<EnvName, BTreeMap<u64, (String, &Node)>>,
    ledger: &LedgerId,
) -> Vec<Result<Document<Entry>, DocError>> {
    let nodes: Vec<&Node> = entry_nodes.values().flat_map(|files| files.values().map(|(_, node)| *node)).collect();
    let parse = |node: &Node| parse_in_ledger::<Entry>(node, Some(ledger), |e| &e.ledger);
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    if threads < 2 || nodes.len() < 256 {
        return nodes.into_iter().map(parse).collect();
    }
    let chunk = nodes.len().div_ceil(threads);
    std::thread::scope(|scope| {
        let parse = &parse;
        let workers: Vec<_> = nodes
            .chunks(chunk)
            .map(|part| scope.spawn(move || part.iter().map(|node| parse(node)).collect::<Vec<_>>()))
            .collect();
        workers.into_iter().flat_map(|w| w.join().expect("entry parsers do not panic")).collect()
    })
}

/// P1-P4 (SPEC.md §6.1) for a policy judged on its own.
pub fn check_policy(doc: &Document<Policy>, expiry: Expiry) -> Result<SignedBy, DocError> {
    let p = &doc.payload;
    if p.version < 1 {
        return Err(DocError::new(Check::D5, "payload: version: must be at least 1"));
    }
    for (id, info) in &p.keys {
        let actual = info.public_key.key_id();
        if actual != *id {
            return Err(DocError::new(
                Check::P1,
                format!("key {:?} is listed under id {id}, but its key id is {actual}", info.name.as_str()),
            ));
        }
    }
    let timestamp_role = p.timestamp.as_ref().map(|t| t.role());
    let roles = std::iter::once(("root".to_owned(), &p.root))
        .chain(p.environments.iter().map(|(env, r)| (format!("environment {env}"), r)))
        .chain(timestamp_role.as_ref().map(|r| ("the timestamp role".to_owned(), r)));
    for (what, role) in roles {
        let mut seen = BTreeSet::new();
        for id in &role.keys {
            if !p.keys.contains_key(id) {
                return Err(DocError::new(Check::P2, format!("{what} lists key {id}, which is not in keys")));
            }
            if !seen.insert(id) {
                return Err(DocError::new(Check::P2, format!("{what} lists key {id} twice")));
            }
        }
        if role.threshold < 1 || role.threshold > role.keys.len() as u64 {
            return Err(DocError::new(
                Check::P2,
                format!(
                    "{what} has threshold {} with {} keys (need 1 <= threshold <= keys)",
                    role.threshold,
                    role.keys.len()
                ),
            ));
        }
    }
    check_agents_and_timestamp(p)?;
    if let Some(expires) = expiry.expired(p.expires_at) {
        return Err(DocError::new(Check::P3, format!("the policy expired at {expires}")));
    }
    doc.check_role(p, &p.root, ForeignSignatures::Skip).map_err(|e| e.caused(Check::P4))
}

/// P8 (SPEC.md §6.1, revision 4): every agent key is a listed key that is in no role (an agent never
/// holds a key that signs releases, specs, policies or timestamps) and reports on declared
/// environments, each named once; the timestamp role's validity is between a minute and a year.
fn check_agents_and_timestamp(p: &Policy) -> Result<(), DocError> {
    for (id, grant) in &p.agents {
        let Some(info) = p.keys.get(id) else {
            return Err(DocError::new(Check::P8, format!("agents lists key {id}, which is not in keys")));
        };
        let in_role = std::iter::once(("root".to_owned(), &p.root.keys))
            .chain(p.environments.iter().map(|(env, r)| (format!("environment {env}"), &r.keys)))
            .chain(p.timestamp.iter().map(|t| ("timestamp".to_owned(), &t.keys)))
            .find(|(_, keys)| keys.contains(id));
        if let Some((role, _)) = in_role {
            return Err(DocError::new(
                Check::P8,
                format!(
                    "agent key {} ({id}) is also in the {role} role; an agent key signs observations only",
                    info.name
                ),
            ));
        }
        if grant.environments.is_empty() {
            return Err(DocError::new(Check::P8, format!("agent key {} lists no environment", info.name)));
        }
        let mut seen = BTreeSet::new();
        for env in &grant.environments {
            if !p.environments.contains_key(env) {
                return Err(DocError::new(
                    Check::P8,
                    format!("agent key {} reports on {env}, which the policy does not declare", info.name),
                ));
            }
            if !seen.insert(env) {
                return Err(DocError::new(Check::P8, format!("agent key {} lists {env} twice", info.name)));
            }
        }
    }
    if let Some(t) = &p.timestamp {
        if !(MIN_VALIDITY_LIMIT..=MAX_VALIDITY_LIMIT).contains(&t.max_validity_seconds) {
            return Err(DocError::new(
                Check::P8,
                format!(
                    "timestamp max_validity_seconds is {}, outside {MIN_VALIDITY_LIMIT}..={MAX_VALIDITY_LIMIT}",
                    t.max_validity_seconds
                ),
            ));
        }
    }
    Ok(())
}

/// N1, N3, N4 (SPEC.md §6.2) for the spec found at `environments/<env>.json`.
pub fn check_environment(policy: &Policy, env: &EnvName, doc: &Document<Environment>) -> Result<SignedBy, DocError> {
    let spec = &doc.payload;
    if spec.name != *env {
        return Err(DocError::new(
            Check::N1,
            format!("spec names environment {}, but its file is for {env}", spec.name),
        ));
    }
    let Some(role) = policy.env_role(env) else {
        return Err(DocError::new(Check::N1, format!("environment {env} is not declared in {POLICY_PATH}")));
    };
    crate::ranges::check_environment_ranges(spec).map_err(|reason| DocError::new(Check::N3, reason))?;
    // The root role may sign a spec too (SPEC.md §5.3): its signatures are how a change that weakens
    // a safety setting is approved (N6, §8.3.2). They are verified but count only for the root.
    doc.check_role(policy, role, ForeignSignatures::VerifyOnly(&policy.root.keys)).map_err(|e| e.caused(Check::N4))
}

/// What the `prev` of the next entry must be.
#[derive(Clone, Copy)]
enum Link {
    Expect(Blake3Digest),
    /// The entry before could not be read, so the link cannot be checked (and that is a problem).
    Broken,
    /// The entry before is missing and the gap was reported; the link is not judged again.
    AfterGap,
}

/// E2, E4 (SPEC.md §6.3): the entry says where it is, and links to the entry before.
fn check_entry_position(entry: &Entry, env: &EnvName, seq: u64, link: Link) -> Result<(), DocError> {
    if entry.env != *env {
        return Err(DocError::new(
            Check::E2,
            format!("entry is for environment {}, but it is filed under {env}", entry.env),
        ));
    }
    if entry.seq != seq {
        return Err(DocError::new(Check::E2, format!("entry has seq {}, but its file name says {seq}", entry.seq)));
    }
    match link {
        Link::Expect(expected) if entry.prev != expected => {
            let what = if seq == 1 {
                "the zero hash (first entry)".to_owned()
            } else {
                format!("the hash of entry {}", seq - 1)
            };
            Err(DocError::new(Check::E4, format!("prev is {}, expected {what}: {expected}", entry.prev)))
        }
        Link::Expect(_) | Link::AfterGap => Ok(()),
        Link::Broken => {
            Err(DocError::new(Check::E4, format!("cannot check prev: entry {} of {env} is invalid", seq - 1)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str) -> Option<(String, u64)> {
        match classify(path)? {
            LayoutPath::Entry(env, seq) => Some((env.to_string(), seq)),
            _ => None,
        }
    }

    #[test]
    fn bucket_paths_name_their_bucket_in_canonical_decimal() {
        assert_eq!(entry("ledger/prod/0/1.json"), Some(("prod".into(), 1)));
        assert_eq!(entry("ledger/prod/0/999.json"), Some(("prod".into(), 999)));
        assert_eq!(entry("ledger/prod/1/1000.json"), Some(("prod".into(), 1000)));
        assert_eq!(entry("ledger/prod/123/123456.json"), Some(("prod".into(), 123_456)));
        for wrong in [
            "ledger/prod/0/1000.json",
            "ledger/prod/1/999.json",
            "ledger/prod/00/1.json",
            "ledger/prod/01/1000.json",
            "ledger/prod/+1/1000.json",
            "ledger/prod//1.json",
            "ledger/prod/0/0/1.json",
        ] {
            assert_eq!(entry(wrong), None, "{wrong}");
        }
        let env: EnvName = "prod".parse().unwrap();
        for seq in [1, 999, 1000, 1001, 999_999_999_999_999] {
            let path = Layout::Buckets.entry_path(&env, seq);
            assert_eq!(entry(&path), Some(("prod".into(), seq)), "{path}");
            assert_eq!(Layout::of_entry_path(&path), Layout::Buckets);
            assert_eq!(Layout::of_entry_path(&Layout::Flat.entry_path(&env, seq)), Layout::Flat);
        }
    }
}
