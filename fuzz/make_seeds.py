#!/usr/bin/env python3
"""Writes the seed corpora in fuzz/seeds/ that come from the ledger format's test vectors.

    python3 fuzz/make_seeds.py

Seeds for json, document, verify_tree, history and sshsig come from ledger-format/test-vectors/
(real signed documents, trees, histories and SSH commit signatures); run this again after the vectors
change. The other seeds (a status file, agent configurations, packed images) are real files made by
the tools themselves; fuzz/README.md says how each was made. The container formats are the ones
fuzz/src/lib.rs reads.
"""
import base64
import hashlib
import json
import pathlib
import shutil

ROOT = pathlib.Path(__file__).resolve().parent.parent
VECTORS = ROOT / "ledger-format" / "test-vectors"
SEEDS = ROOT / "fuzz" / "seeds"


def node_bytes(node):
    """A vector node as (kind, bytes): kind is 'file', 'link', 'other' or 'large'."""
    if "text" in node:
        return "file", node["text"].encode()
    if "base64" in node:
        return "file", base64.b64decode(node["base64"])
    if "repeat" in node:
        r = node["repeat"]
        if r["count"] > (1 << 20) + 1:
            return "large", b""
        return "file", bytes([r["byte"]]) * r["count"]
    if "symlink" in node:
        return "link", b""
    return "other", b""


def path_bytes(path):
    if path.startswith("base64:"):
        return base64.b64decode(path[len("base64:"):])
    return path.encode()


def tree_container(files):
    """fuzz/src/lib.rs parse_tree's format; None when a file would not survive the round trip."""
    out = b""
    for path, node in sorted(files.items(), key=lambda kv: path_bytes(kv[0])):
        kind, data = node_bytes(node)
        header = b"%% " + path_bytes(path)
        if kind != "file":
            out += header + {"link": b" @link", "other": b" @other", "large": b" @large"}[kind] + b"\n"
            continue
        if b"\n%% " in data or (data and not data.endswith(b"\n")) or len(data) > 64 * 1024:
            return None
        out += header + b"\n" + data
    return out


def write(target, name, data):
    d = SEEDS / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def main():
    for target in ["json", "document", "verify_tree", "history", "sshsig"]:
        shutil.rmtree(SEEDS / target, ignore_errors=True)

    documents = {}
    for case in sorted(VECTORS.glob("valid/*.json")) + sorted(VECTORS.glob("invalid/*.json")):
        vector = json.loads(case.read_text())
        tree = tree_container(vector["files"])
        if tree is not None and len(tree) <= 64 * 1024:
            write("verify_tree", case.stem, tree)
        for path, node in vector["files"].items():
            kind, data = node_bytes(node)
            if kind == "file" and len(data) <= 16 * 1024:
                documents.setdefault(hashlib.sha256(data).hexdigest()[:16], data)
    # Revision 4: status documents and timestamps from the observation and freshness vectors.
    for case in sorted(VECTORS.glob("observations/*.json")):
        data = json.loads(case.read_text())["file"].encode()
        documents.setdefault(hashlib.sha256(data).hexdigest()[:16], data)
        write("status_file", "observation-" + case.stem, data)
    for case in sorted(VECTORS.glob("freshness/*.json")):
        t = json.loads(case.read_text()).get("timestamp")
        if t:
            documents.setdefault(hashlib.sha256(t.encode()).hexdigest()[:16], t.encode())
    for digest, data in sorted(documents.items()):
        write("json", digest, data)
        write("document", digest, data)

    # history: [genesis index, then "1" and a big-endian u16 step index per commit] replays a vector.
    names = sorted(VECTORS.glob("history/*.json"))
    step_base = 0
    signatures = {}
    for index, case in enumerate(names):
        vector = json.loads(case.read_text())
        program = bytes([index])
        for n, step in enumerate(vector["steps"]):
            program += bytes([1]) + (step_base + n).to_bytes(2, "big")
            sig = step.get("commit", {}).get("ssh_signature")
            if sig:
                data = sig["armored"].encode()
                if not data.endswith(b"\n"):
                    data += b"\n"
                data += base64.b64decode(sig["signed_payload"])
                signatures.setdefault(hashlib.sha256(data).hexdigest()[:16], data)
        step_base += len(vector["steps"])
        write("history", case.stem, program)
    for digest, data in sorted(signatures.items()):
        write("sshsig", digest, data)


if __name__ == "__main__":
    main()
