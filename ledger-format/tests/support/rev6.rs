//! Revision 6 vectors (SPEC.md §6.2 provider `gcp`): environment specs for Compute Engine managed
//! instance groups, valid and refused by their member types (D5) and ranges (N3).
//!
//! A child module of `vectors.rs`, whose builders it uses.

use super::{entry, env_spec, invalid, lit, policy, role, sign_value, signed, spec_path, valid, Cases, Keys, Tree};
use ledger_format::check::Check;
use ledger_format::crypto::Blake3Digest;
use ledger_format::document::{DocKind, Document};
use ledger_format::tree::POLICY_PATH;
use ledger_format::types::{CanaryStep, Entry, Environment, Image, Provider, Strategy};

/// A rolling gcp spec of `env` with every optional member but the url map's.
fn gcp_spec(env: &str) -> Environment {
    Environment {
        provider: Provider::Gcp {
            project: lit("acme-prod"),
            region: lit("europe-west1"),
            instance_template: lit("web-base"),
            image_projects: vec![lit("acme-images")],
            backend_services: vec![lit("web")],
            url_map: None,
            health_check: None,
            port: None,
        },
        ..env_spec(env)
    }
}

/// The same with canary steps 10 and 50 over `web-map`, checked by `web-hc` on port 8080.
fn gcp_canary_spec(env: &str) -> Environment {
    let mut spec = gcp_spec(env);
    if let Provider::Gcp { backend_services, url_map, health_check, port, .. } = &mut spec.provider {
        backend_services.clear();
        *url_map = Some(lit("web-map"));
        *health_check = Some(lit("web-hc"));
        *port = Some(8080);
    }
    spec.strategy = Strategy::Canary {
        steps: vec![CanaryStep { weight: 10, pause_seconds: 300 }, CanaryStep { weight: 50, pause_seconds: 600 }],
    };
    spec
}

/// The tree of policy (prod: alice, 1 of 1), `spec` signed by alice, and entries 1..=`entries` pinning
/// images `projects/acme-images/global/images/web-1-<seq>-0`.
fn gcp_tree(k: &Keys, spec: &Environment, entries: u64) -> Tree {
    let mut tree = Tree::default();
    tree.put(POLICY_PATH, &signed(policy(k, &[&k.alice], &[("prod", role(&[&k.alice], 1))]), &[&k.root]));
    tree.put(&spec_path(spec.name.as_str()), &signed(spec.clone(), &[&k.alice]));
    let mut prev: Option<Document<Entry>> = None;
    for seq in 1..=entries {
        let id = format!("projects/acme-images/global/images/web-1-{seq}-0");
        let mut e = entry(spec.name.as_str(), seq, prev.as_ref().map_or(Blake3Digest::ZERO, |d| d.hash()));
        e.image = Image::MachineImage { blake3: Blake3Digest(*blake3::hash(id.as_bytes()).as_bytes()), id: lit(&id) };
        let doc = signed(e, &[&k.alice]);
        tree.put(&format!("ledger/{}/{seq}.json", spec.name), &doc);
        prev = Some(doc);
    }
    tree
}

/// `tree` with prod's spec replaced by `spec` (a JSON value, possibly outside the types), signed by alice.
fn with_spec_value(mut tree: Tree, spec: &serde_json::Value, k: &Keys) -> Tree {
    tree.put_bytes(&spec_path("prod"), sign_value(DocKind::Environment, spec, &[&k.alice]));
    tree
}

/// A change to a spec, for the cases refused at N3.
type SpecChange = fn(&mut Environment);

fn spec_value(spec: &Environment) -> serde_json::Value {
    serde_json::to_value(spec).expect("a spec serializes")
}

pub(super) fn tree_cases(k: &Keys, cases: &mut Cases) {
    let tree = gcp_tree(k, &gcp_spec("prod"), 2);
    cases.add(
        "valid/gcp-rolling",
        "Revision 6: prod runs on provider gcp (project acme-prod, region europe-west1, instance template \
         web-base, images from acme-images, rolling group behind backend service web); its entries 1 and 2 \
         pin images projects/acme-images/global/images/web-1-<seq>-0.",
        tree.clone(),
        valid(&tree),
    );

    let tree = gcp_tree(k, &gcp_canary_spec("prod"), 1);
    cases.add(
        "valid/gcp-canary",
        "Revision 6: prod runs canary steps 10 and 50 on provider gcp, weighted by url map web-map between \
         per-generation backend services checked by health check web-hc on port 8080.",
        tree.clone(),
        valid(&tree),
    );

    // Spec cases need no entries: the spec is judged alone.
    let base = gcp_tree(k, &gcp_spec("prod"), 0);
    let bad_n3: [(&str, &str, SpecChange); 5] = [
        ("invalid/n3-gcp-image-projects-empty", "prod's gcp spec lists no image_projects (N3).", |s| {
            if let Provider::Gcp { image_projects, .. } = &mut s.provider {
                image_projects.clear();
            }
        }),
        (
            "invalid/n3-gcp-canary-without-url-map",
            "prod's gcp spec runs canary with health_check and port but no url_map: blue_green and canary \
             need url_map, health_check and port (N3).",
            |s| {
                *s = gcp_canary_spec("prod");
                if let Provider::Gcp { url_map, .. } = &mut s.provider {
                    *url_map = None;
                }
            },
        ),
        (
            "invalid/n3-gcp-blue-green-without-health-check",
            "prod's gcp spec runs blue_green with url_map and port but no health_check (N3).",
            |s| {
                *s = gcp_canary_spec("prod");
                s.strategy = Strategy::BlueGreen { grace_seconds: 60 };
                if let Provider::Gcp { health_check, .. } = &mut s.provider {
                    *health_check = None;
                }
            },
        ),
        ("invalid/n3-gcp-port-zero", "prod's gcp spec has port 0, outside 1..=65535 (N3).", |s| {
            if let Provider::Gcp { port, .. } = &mut s.provider {
                *port = Some(0);
            }
        }),
        (
            "invalid/n3-gcp-names-too-long",
            "prod's gcp spec has a group named with 31 characters: environment and group names are 35 \
             characters together, over 34, so stele-prod-<group>-g<generation> could exceed GCP's 63 (N3).",
            |s| s.groups[0].name = lit(&format!("web-{}", "a".repeat(27))),
        ),
    ];
    for (name, description, change) in bad_n3 {
        let mut spec = gcp_spec("prod");
        change(&mut spec);
        cases.add(
            name,
            description,
            with_spec_value(base.clone(), &spec_value(&spec), k),
            invalid(&[("environments/prod.json", Check::N3)]),
        );
    }

    // Just within the name limit: 4 + 30 = 34 characters.
    let mut spec = gcp_spec("prod");
    spec.groups[0].name = lit(&format!("web-{}", "a".repeat(26)));
    let tree = gcp_tree(k, &spec, 0);
    cases.add(
        "valid/gcp-names-at-limit",
        "prod's gcp spec has a group named with 30 characters: environment and group names are 34 characters \
         together, the most N3 allows on gcp.",
        tree.clone(),
        valid(&tree),
    );

    let bad_d5: [(&str, &str, &str, serde_json::Value); 4] = [
        (
            "invalid/d5-gcp-project-too-short",
            "prod's gcp spec names project acme: a project id has 6-30 characters (D5).",
            "project",
            serde_json::json!("acme"),
        ),
        (
            "invalid/d5-gcp-instance-template-not-rfc1035",
            "prod's gcp spec names instance template Web_Base: resource names are 1-63 of a-z 0-9 '-', \
             starting with a letter (D5).",
            "instance_template",
            serde_json::json!("Web_Base"),
        ),
        (
            "invalid/d5-gcp-url-map-as-path",
            "prod's gcp spec names its url map by path (projects/acme-prod/global/urlMaps/web-map): members \
             are resource names, the project is the spec's (D5).",
            "url_map",
            serde_json::json!("projects/acme-prod/global/urlMaps/web-map"),
        ),
        (
            "invalid/d5-gcp-unknown-member",
            "prod's gcp spec has a member zone, which revision 6 does not define (D5).",
            "zone",
            serde_json::json!("europe-west1-b"),
        ),
    ];
    for (name, description, member, value) in bad_d5 {
        let mut v = spec_value(&gcp_spec("prod"));
        v["provider"][member] = value;
        cases.add(
            name,
            description,
            with_spec_value(base.clone(), &v, k),
            invalid(&[("environments/prod.json", Check::D5)]),
        );
    }
}
