"""API keys and roles. Pure Python: the gateway asks `KeyStore.role_for(key)`.

Keys are stored only as SHA-256 digests and compared in constant time
(`hmac.compare_digest` against every stored digest, no early exit), so neither
a leaked key file nor response timing gives a key away. API keys are random
high-entropy tokens, which is why a plain hash (not a password KDF) is enough.

Where keys come from (never the command line, which `ps` shows):
- a file (`--api-keys-file`), one key per line: `<role> sha256:<hex digest> [name]`
  (lines from `nestvec keygen`; `#` starts a comment);
- the environment variable NESTVEC_API_KEYS: `role:key,role:key` (plaintext
  keys, hashed at load and never kept).
"""
from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from dataclasses import dataclass

ROLES = ("read", "write", "admin")  # each role can do everything the ones before it can
ENV_VAR = "NESTVEC_API_KEYS"

# The least role each VectorSearch call needs.
CALL_ROLES = {
    "DescribeCollection": "read", "ListCollections": "read", "Get": "read", "Search": "read",
    "Count": "read",
    "Upsert": "write", "UpsertStream": "write", "Delete": "write", "SetPayload": "write",
    "CreateCollection": "admin", "DropCollection": "admin", "CreateIndex": "admin",
}


class KeyFileError(Exception):
    pass


def digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def allows(role: str, call: str) -> bool:
    return ROLES.index(role) >= ROLES.index(CALL_ROLES[call])


@dataclass(frozen=True)
class _Entry:
    digest: bytes
    role: str
    name: str


class KeyStore:
    def __init__(self, entries: list[_Entry]):
        self._entries = entries

    def __len__(self) -> int:
        return len(self._entries)

    def role_for(self, key: str) -> str | None:
        """The role of a presented key, or None; the time taken does not depend on which matched."""
        presented = hashlib.sha256(key.encode()).digest()
        role = None
        for e in self._entries:
            if hmac.compare_digest(presented, e.digest):
                role = e.role
        return role

    @staticmethod
    def load(path: str | None = None, environ: dict | None = None) -> "KeyStore":
        env = os.environ if environ is None else environ
        entries: list[_Entry] = []
        if path:
            entries += _parse_file(path)
        for i, item in enumerate(x for x in env.get(ENV_VAR, "").split(",") if x.strip()):
            role, sep, key = item.strip().partition(":")
            if not sep or role not in ROLES or not key:
                raise KeyFileError(f"{ENV_VAR} entry {i + 1} must look like <role>:<key> with role "
                                   f"one of {', '.join(ROLES)}")
            entries.append(_Entry(hashlib.sha256(key.encode()).digest(), role, f"env-{i + 1}"))
        return KeyStore(entries)


def _parse_file(path: str) -> list[_Entry]:
    entries = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            parts = line.split()
            if len(parts) < 2 or parts[0] not in ROLES or not parts[1].startswith("sha256:"):
                raise KeyFileError(f"{path}:{n}: expected '<role> sha256:<hex digest> [name]' with role "
                                   f"one of {', '.join(ROLES)}")
            try:
                raw = bytes.fromhex(parts[1][len("sha256:"):])
            except ValueError:
                raw = b""
            if len(raw) != 32:
                raise KeyFileError(f"{path}:{n}: the digest must be 64 hex characters (SHA-256)")
            entries.append(_Entry(raw, parts[0], parts[2] if len(parts) > 2 else f"line-{n}"))
    return entries


def new_key(role: str, name: str = "") -> tuple[str, str]:
    """(a fresh random key to give the client, the key-file line that admits it)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    key = "nv_" + secrets.token_urlsafe(32)
    return key, f"{role} sha256:{digest(key)} {name}".rstrip()
