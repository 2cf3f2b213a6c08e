"""Console accounts and sessions: who may sign in, with which role, and who is signed in now.

Kept in their own SQLite file in the data dir (``console/accounts.sqlite``), not in the service's
state store: the service never reads them, a console busy with logins never takes the store's
write lock from the SCP, and the file is backed up with the rest of the data dir. Passwords are
hashed with Argon2id (argon2-cffi's defaults: 64 MiB, memory-hard); sessions are random tokens
kept only as their SHA-256, so a copy of the file opens no session.
"""

from __future__ import annotations

import hashlib
import re
import secrets
import sqlite3
import time
from contextlib import closing
from dataclasses import dataclass, replace
from pathlib import Path

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

ROLES = ("officer", "reviewer", "operator")
# What each role may do; every request is checked against this, on the server.
PERMISSIONS: dict[str, frozenset[str]] = {
    "officer": frozenset({"status", "review", "rules"}),
    "reviewer": frozenset({"status", "audit"}),
    "operator": frozenset({"status", "review", "originals", "audit"}),
}
MIN_PASSWORD = 10
MAX_FAILURES = 5  # wrong passwords in a row before the account is locked ...
LOCK_S = 15 * 60  # ... for this long
# Failed sign-ins from one client address, whatever the names tried, within ADDRESS_WINDOW_S that
# lock the address out for ADDRESS_LOCK_S: guessing across many accounts locks none of them.
ADDRESS_MAX_FAILURES = 20
ADDRESS_WINDOW_S = 15 * 60
ADDRESS_LOCK_S = 15 * 60
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    role TEXT NOT NULL,
    password TEXT NOT NULL,
    disabled INTEGER NOT NULL DEFAULT 0,
    failures INTEGER NOT NULL DEFAULT 0,
    locked_until REAL NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    last_login REAL
);
CREATE TABLE IF NOT EXISTS address_failures (
    address TEXT NOT NULL,
    at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS address_failures_by_address ON address_failures (address, at);
CREATE TABLE IF NOT EXISTS address_locks (
    address TEXT PRIMARY KEY,
    locked_until REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    name TEXT NOT NULL REFERENCES users (name),
    csrf TEXT NOT NULL,
    created_at REAL NOT NULL,
    seen_at REAL NOT NULL
);
"""


class AccountError(Exception):
    """A request about accounts that cannot be done; the message says why."""


@dataclass(frozen=True)
class User:
    name: str
    role: str
    disabled: bool = False
    locked_until: float = 0.0
    last_login: float | None = None

    def may(self, permission: str) -> bool:
        return permission in PERMISSIONS.get(self.role, frozenset())


@dataclass(frozen=True)
class Session:
    user: User
    csrf: str
    token_hash: str


@dataclass(frozen=True)
class SignIn:
    """The answer to a sign-in: the user, or why not (``unknown user``, ``wrong password``,
    ``locked``, ``disabled``, ``address locked``); ``locked_now`` when this failure locked the
    account, ``address_locked_now`` when it locked the client's address."""

    user: User | None
    refusal: str = ""
    locked_now: bool = False
    address_locked_now: bool = False


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Accounts:
    """The accounts file. One connection per call: the console serves requests from a thread pool.

    The per-address limit is kept here, beside the accounts' own lock-out, rather than in a rate
    limiting library's memory: a restarted console must not forget a locked address, and the
    whole rule is a count over a window in one table.
    """

    def __init__(
        self,
        path: Path,
        address_max_failures: int = ADDRESS_MAX_FAILURES,
        address_window_s: float = ADDRESS_WINDOW_S,
        address_lock_s: float = ADDRESS_LOCK_S,
    ) -> None:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.path = path
        self.address_max_failures = address_max_failures
        self.address_window_s = address_window_s
        self.address_lock_s = address_lock_s
        self._hasher = PasswordHasher()
        # Verified against for unknown names, so a wrong name takes as long as a wrong password.
        self._decoy = self._hasher.hash(secrets.token_hex(16))
        with self._db() as db:
            db.executescript(_SCHEMA)
        path.chmod(0o600)

    def _db(self) -> closing[sqlite3.Connection]:
        """A connection in autocommit mode, closed at the end of the ``with``."""
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.row_factory = sqlite3.Row
        db.execute("PRAGMA foreign_keys=ON")
        return closing(db)

    # --- accounts ---------------------------------------------------------------------------

    def add(self, name: str, role: str, password: str) -> User:
        if not _NAME.fullmatch(name):
            raise AccountError(f"{name!r}: a user name is letters, digits, '.', '_' or '-' (at most 64)")
        if role not in ROLES:
            raise AccountError(f"role {role!r}: choose one of {', '.join(ROLES)}")
        if len(password) < MIN_PASSWORD:
            raise AccountError(f"the password is too short: at least {MIN_PASSWORD} characters")
        with self._db() as db:
            try:
                db.execute(
                    "INSERT INTO users (name, role, password, created_at) VALUES (?, ?, ?, ?)",
                    (name, role, self._hasher.hash(password), time.time()),
                )
            except sqlite3.IntegrityError:
                raise AccountError(f"user {name!r} exists already") from None
        return User(name, role)

    def users(self) -> list[User]:
        with self._db() as db:
            rows = db.execute("SELECT * FROM users ORDER BY name").fetchall()
        return [_user(r) for r in rows]

    def disable(self, name: str) -> None:
        """Disable the account and end its sessions at once."""
        with self._db() as db:
            if not db.execute("UPDATE users SET disabled = 1 WHERE name = ?", (name,)).rowcount:
                raise AccountError(f"no user {name!r}; see 'dicom-anon users list'")
            db.execute("DELETE FROM sessions WHERE name = ?", (name,))

    # --- signing in -------------------------------------------------------------------------

    def sign_in(self, name: str, password: str, address: str = "") -> SignIn:
        """Check a password from the client at ``address``; MAX_FAILURES wrong ones in a row lock
        the account for LOCK_S, and address_max_failures failures of any kind from one address
        within address_window_s lock that address for address_lock_s (no password is checked)."""
        now = time.time()
        with self._db() as db:
            db.execute("DELETE FROM address_locks WHERE locked_until <= ?", (now,))
            if db.execute("SELECT 1 FROM address_locks WHERE address = ?", (address,)).fetchone():
                return SignIn(None, "address locked")
            answer = self._sign_in(db, name, password, now)
            if answer.user is None:
                return replace(answer, address_locked_now=self._failed_from(db, address, now))
        return answer

    def _sign_in(self, db: sqlite3.Connection, name: str, password: str, now: float) -> SignIn:
        row = db.execute("SELECT * FROM users WHERE name = ?", (name,)).fetchone()
        if row is None:
            self._check(self._decoy, password)
            return SignIn(None, "unknown user")
        user = _user(row)
        if user.disabled:
            return SignIn(None, "disabled")
        if user.locked_until > now:
            return SignIn(None, "locked")
        if not self._check(row["password"], password):
            failures = row["failures"] + 1
            locked = failures >= MAX_FAILURES
            db.execute(
                "UPDATE users SET failures = ?, locked_until = ? WHERE name = ?",
                (0 if locked else failures, now + LOCK_S if locked else 0, name),
            )
            return SignIn(None, "wrong password", locked_now=locked)
        if self._hasher.check_needs_rehash(row["password"]):
            db.execute("UPDATE users SET password = ? WHERE name = ?", (self._hasher.hash(password), name))
        db.execute(
            "UPDATE users SET failures = 0, locked_until = 0, last_login = ? WHERE name = ?", (now, name)
        )
        return SignIn(user)

    def _failed_from(self, db: sqlite3.Connection, address: str, now: float) -> bool:
        """Count a failure against ``address``; True when it locks the address now."""
        db.execute("DELETE FROM address_failures WHERE at <= ?", (now - self.address_window_s,))
        db.execute("INSERT INTO address_failures (address, at) VALUES (?, ?)", (address, now))
        (count,) = db.execute(
            "SELECT count(*) FROM address_failures WHERE address = ?", (address,)
        ).fetchone()
        if count < self.address_max_failures:
            return False
        db.execute("DELETE FROM address_failures WHERE address = ?", (address,))
        db.execute(
            "INSERT OR REPLACE INTO address_locks (address, locked_until) VALUES (?, ?)",
            (address, now + self.address_lock_s),
        )
        return True

    def _check(self, stored: str, password: str) -> bool:
        try:
            return self._hasher.verify(stored, password)
        except (VerificationError, InvalidHashError):
            return False

    # --- sessions ---------------------------------------------------------------------------

    def open_session(self, user: User) -> str:
        """A new session's token, for the cookie; only its SHA-256 is stored."""
        token = secrets.token_urlsafe(32)
        csrf = secrets.token_urlsafe(32)
        now = time.time()
        with self._db() as db:
            db.execute(
                "INSERT INTO sessions (token_hash, name, csrf, created_at, seen_at) VALUES (?, ?, ?, ?, ?)",
                (_digest(token), user.name, csrf, now, now),
            )
        return token

    def session(self, token: str, idle_s: float, max_s: float) -> tuple[Session | None, str]:
        """The live session of ``token`` (its idle time restarted), or None and why: ``expired``
        (idle for idle_s, or older than max_s; it is ended), ``unknown`` (ended, or never was)."""
        now = time.time()
        with self._db() as db:
            row = db.execute(
                "SELECT s.*, u.role, u.disabled, u.locked_until, u.last_login FROM sessions s"
                " JOIN users u ON u.name = s.name WHERE s.token_hash = ?",
                (_digest(token),),
            ).fetchone()
            if row is None or row["disabled"]:
                return None, "unknown"
            if now - row["seen_at"] > idle_s or now - row["created_at"] > max_s:
                db.execute("DELETE FROM sessions WHERE token_hash = ?", (row["token_hash"],))
                return None, "expired"
            db.execute("UPDATE sessions SET seen_at = ? WHERE token_hash = ?", (now, row["token_hash"]))
        user = User(row["name"], row["role"], False, row["locked_until"], row["last_login"])
        return Session(user, row["csrf"], row["token_hash"]), ""

    def close_session(self, session: Session) -> None:
        with self._db() as db:
            db.execute("DELETE FROM sessions WHERE token_hash = ?", (session.token_hash,))


def _user(row: sqlite3.Row) -> User:
    return User(row["name"], row["role"], bool(row["disabled"]), row["locked_until"], row["last_login"])
