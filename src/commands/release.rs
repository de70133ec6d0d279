//! `stele release`: hash the image, append the next signed entry to an environment's chain, commit.

use super::base::load_base;
use super::proposal::{self, slug, Outcome, Submission};
use super::{human_size, key_list, now, parse_when};
use crate::cli::ReleaseArgs;
use crate::exit::{self, Refused};
use crate::image::{self, ImageDigest};
use crate::keys;
use crate::repo::{Change, LedgerRepo, PROPOSAL_PREFIX};
use anyhow::{Context, Result};
use ledger_format::types::{ArtifactUri, EntryType, EnvName, Image, Provider};
use ledger_format::{Blake3Digest, Document};
use std::path::{Path, PathBuf};

/// Where `--image` points: a local file, or a URL that is streamed.
enum Source {
    File(PathBuf),
    Url(String),
}

/// Resolves `--image` to what to hash and the URI to record in the entry.
fn locate(image: &str, uri: Option<&str>) -> Result<(Source, ArtifactUri)> {
    let (source, own_uri) = if image.starts_with("http://") || image.starts_with("https://") {
        (Source::Url(image.to_owned()), image.to_owned())
    } else {
        let path = PathBuf::from(image.strip_prefix("file://").unwrap_or(image));
        let absolute = path.canonicalize().with_context(|| format!("{}: cannot open image", path.display()))?;
        let own = format!("file://{}", absolute.display());
        (Source::File(absolute), own)
    };
    let recorded: ArtifactUri = uri
        .unwrap_or(&own_uri)
        .parse()
        .map_err(|e: String| Refused(format!("{e}; pass --uri with the URL the agents will fetch the image from")))?;
    Ok((source, recorded))
}

/// A local-provider environment runs the image's manifest: an archive without a valid one would
/// stall the agent at deploy time, so it is refused here, before anything is signed. An image at a URL
/// is not fetched twice: the agent checks it when it unpacks.
fn check_local_image(env: &EnvName, image: &str, source: &Source) -> Result<()> {
    use crate::provider::local::store::{check_image_archive, IMAGE_NEEDS};
    match source {
        Source::File(path) => check_image_archive(path).map(drop).map_err(|reason| {
            Refused(format!(
                "{image}: not an image the local provider of {env} can run: {reason}; {IMAGE_NEEDS} \
                 (add it to the directory and pack it again with `stele image pack DIR --out FILE`); \
                 nothing was released"
            ))
            .into()
        }),
        Source::Url(_) => {
            eprintln!("note: {image} is a URL, so its manifest is checked by the agent when it unpacks the image");
            Ok(())
        }
    }
}

fn check_expectations(args: &ReleaseArgs, image: &str, actual: &ImageDigest) -> Result<()> {
    if let Some(hex) = &args.expect_blake3 {
        let expected: Blake3Digest = hex.parse().map_err(Refused)?;
        if expected != actual.blake3 {
            return Err(Refused(format!(
                "{image}: BLAKE3 digest is {}, expected {expected}; nothing was released",
                actual.blake3
            ))
            .into());
        }
    }
    if let Some(size) = args.expect_size.filter(|s| *s != actual.size) {
        return Err(
            Refused(format!("{image}: size is {} bytes, expected {size}; nothing was released", actual.size)).into()
        );
    }
    Ok(())
}

pub fn run(repo_path: &Path, args: ReleaseArgs) -> Result<u8> {
    let now = now();
    let key = keys::load_secret(&args.key)?;
    let repo = LedgerRepo::open(repo_path)?;
    let base = load_base(&repo)?;
    let env = args.env.parse().map_err(Refused)?;
    let policy = &base.state.policy.payload;
    let Some(state) = base.state.envs.get(&env) else {
        return Err(Refused(format!("environment {env} is not declared in this ledger")).into());
    };
    let role = policy.env_role(&env).expect("verified environments are declared");
    if !role.keys.contains(&key.key_id()) {
        return Err(Refused(format!(
            "key {} is not a signer of {env} (signers: {}); see `stele policy add-signer`",
            key.key_id(),
            key_list(policy, &role.keys)
        ))
        .into());
    }
    let version = args.version.parse().map_err(Refused)?;
    let expires_at = args.expires.as_deref().map(|w| parse_when(w, now)).transpose()?;
    if let Some(t) = expires_at.filter(|t| *t <= now) {
        return Err(Refused(format!("--expires {t} is not in the future")).into());
    }

    let image = match (&args.image, &args.ami) {
        (Some(path_or_url), _) => {
            let (source, uri) = locate(path_or_url, args.uri.as_deref())?;
            // A URL serves whatever its server holds at the moment it is fetched: the entry must sign
            // the bytes a person reviewed, so the digest is confirmed, never taken on trust.
            if matches!(source, Source::Url(_)) && args.expect_blake3.is_none() {
                return Err(Refused(format!(
                    "{path_or_url}: an image given by URL needs --expect-blake3 HEX, the digest you reviewed \
                     (`stele image digest {path_or_url}` prints what the server sends now); nothing was released"
                ))
                .into());
            }
            if matches!(state.spec.payload.provider, Provider::Local {}) {
                check_local_image(&env, path_or_url, &source)?;
            }
            eprintln!("hashing {path_or_url} ...");
            let digest = match &source {
                Source::File(path) => image::digest_file_parallel(path, Some(args.max_size))?,
                Source::Url(url) => image::digest_url(url, Some(args.max_size))?,
            };
            check_expectations(&args, path_or_url, &digest)?;
            Image::Artifact { uri, blake3: digest.blake3, size: digest.size }
        }
        (None, Some(ami)) => {
            // A machine image is not fetched here: its digest is what the bake pipeline recorded, and
            // the agent checks the AMI's `stele:blake3` tag against it before anything changes.
            let id = ami.parse().map_err(Refused)?;
            let hex = args.blake3.as_deref().expect("clap requires --blake3 with --ami");
            Image::MachineImage { id, blake3: hex.parse().map_err(Refused)? }
        }
        (None, None) => unreachable!("clap requires --image or --ami"),
    };
    let (seq, prev) = match &state.tip {
        Some(tip) => (tip.seq + 1, tip.hash),
        None => (1, Blake3Digest::ZERO),
    };
    let entry = ledger_format::types::Entry {
        payload_type: EntryType,
        ledger: policy.ledger.clone(),
        env: env.clone(),
        seq,
        prev,
        version,
        image,
        created_at: now,
        expires_at,
    };
    let mut doc = Document::new(entry);
    doc.sign(&key.key);
    let file = policy.layout().entry_path(&env, seq);
    let bytes = doc.to_file_bytes();

    let signer = key_list(policy, &[key.key_id()]);
    let image_line = match &doc.payload.image {
        Image::Artifact { uri, blake3, size } => format!("image: blake3:{blake3} size {size}\nuri: {uri}"),
        Image::MachineImage { id, blake3 } => format!("image: blake3:{blake3}\nmachine image: {id}"),
    };
    let submission = Submission {
        changes: vec![Change::Write { path: file.clone(), bytes }],
        subject: format!("release {env} {} (seq {seq})", doc.payload.version),
        body: format!("{image_line}\nentry: {}\n", doc.hash()),
        signed_by: vec![signer.clone()],
        slug: slug(&[env.as_str(), &doc.payload.version.to_string()]),
        name: args.proposal.clone(),
    };
    let outcome = proposal::submit(&repo, &base, &submission)?;
    let (commit, proposal) = match &outcome {
        Outcome::Committed { commit } => (*commit, None),
        Outcome::Proposed { name, commit, .. } => (*commit, Some(name.clone())),
    };
    if args.json {
        println!(
            "{}",
            serde_json::json!({
                "env": env, "seq": seq, "version": doc.payload.version, "file": file, "entry_hash": doc.hash(),
                "image": doc.payload.image, "commit": commit.to_string(), "signed_by": [key.key_id()],
                "threshold": role.threshold, "complete": proposal.is_none(), "proposal": proposal,
                "verified_from": base.source,
                "branch": proposal.as_ref().map(|n| format!("{PROPOSAL_PREFIX}{n}")),
            })
        );
    } else {
        match &proposal {
            None => println!("released {env} {} as {file}", doc.payload.version),
            Some(_) => println!("proposed {env} {} as {file}", doc.payload.version),
        }
        match &doc.payload.image {
            Image::Artifact { blake3, size, .. } => println!("  image  blake3:{blake3} ({})", human_size(*size)),
            Image::MachineImage { id, blake3 } => println!("  image  {id}, blake3:{blake3} (checked by the agent)"),
        }
        println!("  entry  {}", doc.hash());
        match &outcome {
            Outcome::Committed { commit } => {
                println!("  commit {commit}");
                println!("  signed by {signer}: threshold {} met", role.threshold);
            }
            Outcome::Proposed { name, commit, needs } => {
                println!("  signed by {signer}");
                proposal::print_proposed(name, *commit, needs);
            }
        }
    }
    Ok(exit::OK)
}
