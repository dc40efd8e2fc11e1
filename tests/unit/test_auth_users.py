"""trow.auth.users: --user/--password, htpasswd files (bcrypt on the worker, cache, reloads)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from tests.unit.harness import result_of
from tests.unit.test_auth_helpers import (
    LogCapture,
    ManualWorker,
    RecordingWorker,
    bcrypt_hash,
    fake_clock,
    logs,
    write_file,
)
from trow.auth.users import (
    AuthSetupError,
    HtpasswdUsers,
    SingleUser,
    Users,
    parse_htpasswd,
    read_secret,
)
from twisted.internet.defer import ensureDeferred

__all__ = ["logs"]  # the fixture, imported for pytest

ALICE_PW = "alice-secret-1"
BOB_PW = "bob-secret-2"


def check(store: Any, user: str, password: str) -> bool:
    """Run an async check to completion (everything is inline)."""
    return bool(result_of(ensureDeferred(store.check(user, password))))


def exists(store: Any, user: str) -> bool:
    return bool(result_of(ensureDeferred(store.exists(user))))


# -- read_secret -------------------------------------------------------------------------------


def test_read_secret_plain_value() -> None:
    """A value that is not file:// is the secret itself."""
    assert read_secret("s3cret", "--password") == "s3cret"


def test_read_secret_from_file_strips_the_trailing_newline(tmp_path: Path) -> None:
    """file:///path is read once; the newline echo adds is not part of the password."""
    path = tmp_path / "pw"
    path.write_text("from-a-file\n")
    assert read_secret(f"file://{path}", "--password") == "from-a-file"
    path.write_text("with inner\nline\r\n")
    assert read_secret(f"file://{path}", "--password") == "with inner\nline"


def test_read_secret_unreadable_file_is_a_clear_error(tmp_path: Path) -> None:
    """A missing file names the setting and the path, and says why."""
    with pytest.raises(AuthSetupError) as raised:
        read_secret(f"file://{tmp_path}/nope", "--password")
    message = str(raised.value)
    assert message.startswith("--password: cannot read ") and "nope" in message
    assert "No such file" in message


def test_read_secret_empty_file_is_an_error(tmp_path: Path) -> None:
    """An empty password file would make an empty password: refused."""
    path = tmp_path / "pw"
    path.write_text("\n")
    with pytest.raises(AuthSetupError, match="is empty"):
        read_secret(f"file://{path}", "--password")


# -- SingleUser --------------------------------------------------------------------------------


def test_single_user() -> None:
    """Only the exact name and password pass; the password stays out of repr."""
    store = SingleUser("admin", "pa:ss")
    assert check(store, "admin", "pa:ss")
    assert not check(store, "admin", "pa:sS")
    assert not check(store, "admin", "")
    assert not check(store, "Admin", "pa:ss")
    assert exists(store, "admin") and not exists(store, "other")
    assert "pa:ss" not in repr(store)


def test_single_user_compares_with_compare_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain passwords are compared in constant time (hmac.compare_digest), name and password."""
    import trow.auth.users as users

    seen: list[tuple[bytes, bytes]] = []
    real = users.hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(users.hmac, "compare_digest", spy)
    assert check(SingleUser("admin", "pw"), "admin", "pw")
    assert (b"pw", b"pw") in seen and (b"admin", b"admin") in seen


# -- parsing htpasswd ----------------------------------------------------------------------------


def test_parse_htpasswd_keeps_bcrypt_and_names_bad_lines() -> None:
    """Good bcrypt lines are kept; each skipped line is reported by number, never quoted."""
    alice = bcrypt_hash(ALICE_PW)
    lines = [
        f"alice:{alice}",  # 1
        "",  # 2 blank: silent
        "# a comment",  # 3: silent
        "no-colon-here-maybe-a-password",  # 4
        "apr:$apr1$abcdefgh$0123456789abcdefghijkl",  # 5
        "sha:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",  # 6
        "crypt:abJnggxhB/yWI",  # 7
        "plain:plaintextpassword",  # 8
        f"b2a:{bcrypt_hash('x', b'$2a$')}",  # 9
        f"b2b:{bcrypt_hash('x', b'$2b$')}",  # 10
        f"alice:{bcrypt_hash('other')}",  # 11 duplicate
        f":{bcrypt_hash('x')}",  # 12 no user
        "short:$2y$05$tooshort",  # 13
        f"crlf:{bcrypt_hash('x')}\r",  # 14 CRLF endings are fine
    ]
    parsed = parse_htpasswd("\n".join(lines).encode())
    assert set(parsed.entries) == {"alice", "b2a", "b2b", "crlf"}
    assert parsed.entries["alice"] == alice.encode()
    warnings = "\n".join(parsed.warnings)
    for number in (4, 5, 6, 7, 8, 11, 12, 13):
        assert f"line {number}:" in warnings
    for number in (1, 2, 3, 9, 10, 14):
        assert f"line {number}:" not in warnings
    assert "MD5 (apr1)" in warnings and "SHA-1" in warnings and "htpasswd -B" in warnings
    assert "maybe-a-password" not in warnings and "plaintextpassword" not in warnings and "$2y$" not in warnings


def test_parse_htpasswd_survives_binary_garbage() -> None:
    """Non-UTF-8 bytes make a warning, not an exception."""
    parsed = parse_htpasswd(b"\xff\xfe:zz\n" + f"ok:{bcrypt_hash('x')}".encode())
    assert set(parsed.entries) == {"ok"}
    assert parsed.warnings and "line 1:" in parsed.warnings[0]


# -- HtpasswdUsers ---------------------------------------------------------------------------


@pytest.fixture
def htpasswd(tmp_path: Path) -> str:
    path = str(tmp_path / "htpasswd")
    write_file(path, f"alice:{bcrypt_hash(ALICE_PW)}\nbob:{bcrypt_hash(BOB_PW)}\n", mtime_ns=10**18)
    return path


def test_htpasswd_missing_at_start_is_an_error(tmp_path: Path) -> None:
    """A file that is not there at start-up stops trow with a message naming it."""
    with pytest.raises(AuthSetupError, match="htpasswd file .*nope: cannot read it"):
        HtpasswdUsers.load(str(tmp_path / "nope"), RecordingWorker(), fake_clock().seconds)


def test_htpasswd_checks_many_users(htpasswd: str) -> None:
    """Each user with their own password; wrong passwords and unknown users fail."""
    store = HtpasswdUsers.load(htpasswd, RecordingWorker(), fake_clock().seconds)
    assert check(store, "alice", ALICE_PW)
    assert check(store, "bob", BOB_PW)
    assert not check(store, "alice", BOB_PW)
    assert not check(store, "carol", ALICE_PW)
    assert exists(store, "bob") and not exists(store, "carol")
    assert ALICE_PW not in repr(store) and "$2y$" not in repr(store)


def test_bcrypt_runs_on_the_worker_never_inline(htpasswd: str) -> None:
    """A check does not finish until the worker runs the bcrypt call."""
    worker = ManualWorker()
    store = HtpasswdUsers.load(htpasswd, worker, fake_clock().seconds)
    d = ensureDeferred(store.check("alice", ALICE_PW))
    assert not d.called, "bcrypt ran on the calling (reactor) thread"
    assert worker.run_all() == 1
    assert result_of(d) is True


def test_unknown_users_cost_a_bcrypt_run_too(htpasswd: str) -> None:
    """So that response times do not reveal which user names exist; and it still fails."""
    worker = RecordingWorker()
    store = HtpasswdUsers.load(htpasswd, worker, fake_clock().seconds)
    assert not check(store, "carol", ALICE_PW)
    assert worker.calls == ["_verify"]


def test_long_passwords_are_truncated_like_htpasswd_did(tmp_path: Path) -> None:
    """bcrypt sees 72 bytes; bcrypt 5 would raise on more, so trow truncates as htpasswd did."""
    path = str(tmp_path / "htpasswd")
    long = "p" * 100
    write_file(path, f"u:{bcrypt_hash(long[:72])}\n")
    store = HtpasswdUsers.load(path, RecordingWorker(), fake_clock().seconds)
    assert check(store, "u", long)
    assert not check(store, "u", "q" * 100)


def test_concurrent_checks_share_one_bcrypt_run(htpasswd: str) -> None:
    """Parallel requests with the same credentials (a push's layers) wait on one bcrypt run."""
    worker = ManualWorker()
    store = HtpasswdUsers.load(htpasswd, worker, fake_clock().seconds)
    first = ensureDeferred(store.check("alice", ALICE_PW))
    second = ensureDeferred(store.check("alice", ALICE_PW))
    wrong = ensureDeferred(store.check("alice", "nope"))
    assert worker.run_all() == 2  # one for the right password, one for the wrong one
    assert result_of(first) is True and result_of(second) is True and result_of(wrong) is False


def test_a_waiter_cancelled_does_not_cancel_the_shared_run(htpasswd: str) -> None:
    """Klein cancels a handler whose client left: the others still get their answer."""
    worker = ManualWorker()
    store = HtpasswdUsers.load(htpasswd, worker, fake_clock().seconds)
    leaving = ensureDeferred(store.check("alice", ALICE_PW))
    staying = ensureDeferred(store.check("alice", ALICE_PW))
    leaving.cancel()
    leaving.addErrback(lambda _: None)
    worker.run_all()
    assert result_of(staying) is True


def test_successes_are_cached_for_a_while(htpasswd: str) -> None:
    """A right password is checked by bcrypt once per TTL; wrong ones every time."""
    worker = RecordingWorker()
    clock = fake_clock()
    store = HtpasswdUsers.load(htpasswd, worker, clock.seconds)
    assert check(store, "alice", ALICE_PW)
    assert check(store, "alice", ALICE_PW)
    assert worker.calls.count("_verify") == 1
    assert not check(store, "alice", "wrong")
    assert not check(store, "alice", "wrong")
    assert worker.calls.count("_verify") == 3
    clock.advance(HtpasswdUsers.cache_ttl + 1)
    assert check(store, "alice", ALICE_PW)
    assert worker.calls.count("_verify") == 4


def test_the_cache_is_keyed_by_user_and_password(htpasswd: str) -> None:
    """A cached success for alice says nothing about other passwords or other users."""
    store = HtpasswdUsers.load(htpasswd, RecordingWorker(), fake_clock().seconds)
    assert check(store, "alice", ALICE_PW)
    assert not check(store, "alice", ALICE_PW + "x")
    assert not check(store, "bob", ALICE_PW)
    # The cache never holds the password itself.
    assert all(ALICE_PW.encode() not in key for key in store._cache)


def test_reload_when_the_file_changes_at_most_once_a_second(htpasswd: str, logs: LogCapture) -> None:
    """A new user appears after the file changes, once a second has passed since the last look."""
    worker = RecordingWorker()
    clock = fake_clock()
    store = HtpasswdUsers.load(htpasswd, worker, clock.seconds)
    write_file(htpasswd, f"alice:{bcrypt_hash(ALICE_PW)}\ncarol:{bcrypt_hash('carol-pw')}\n", mtime_ns=2 * 10**18)
    clock.advance(0.5)
    assert not check(store, "carol", "carol-pw")
    assert "_read_if_changed" not in worker.calls  # within the second: not even a stat
    clock.advance(0.6)
    assert check(store, "carol", "carol-pw")
    assert not check(store, "bob", BOB_PW)  # bob was removed
    assert store.users == {"alice", "carol"}
    assert any("reloaded: 2 users" in m for m in logs.messages())


def test_unchanged_file_is_not_read_again(htpasswd: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only a changed mtime, size or inode makes trow read the file."""
    import trow.auth.users as users

    parsed: list[bytes] = []
    real = users.parse_htpasswd
    monkeypatch.setattr(users, "parse_htpasswd", lambda data: parsed.append(data) or real(data))
    clock = fake_clock()
    store = HtpasswdUsers.load(htpasswd, RecordingWorker(), clock.seconds)
    for _ in range(3):
        clock.advance(2)
        assert check(store, "alice", ALICE_PW)
    assert len(parsed) == 1  # the load
    os.utime(htpasswd, ns=(3 * 10**18, 3 * 10**18))
    clock.advance(2)
    assert check(store, "alice", ALICE_PW)
    assert len(parsed) == 2


def test_reload_drops_cached_successes(htpasswd: str) -> None:
    """A password changed in the file stops working at the next look, cache or not."""
    clock = fake_clock()
    store = HtpasswdUsers.load(htpasswd, RecordingWorker(), clock.seconds)
    assert check(store, "alice", ALICE_PW)
    write_file(htpasswd, f"alice:{bcrypt_hash('new-pw')}\n", mtime_ns=2 * 10**18)
    clock.advance(1.5)
    assert not check(store, "alice", ALICE_PW)
    assert check(store, "alice", "new-pw")


def test_bad_lines_on_reload_are_skipped_with_warnings(htpasswd: str, logs: LogCapture) -> None:
    """A reloaded file with a broken line keeps its good lines and warns with the line number."""
    clock = fake_clock()
    store = HtpasswdUsers.load(htpasswd, RecordingWorker(), clock.seconds)
    write_file(
        htpasswd, f"garbage-line\nalice:{bcrypt_hash(ALICE_PW)}\nmd5:$apr1$xyz$abc\n", mtime_ns=2 * 10**18
    )
    clock.advance(1.5)
    assert check(store, "alice", ALICE_PW)
    warnings = [m for m in logs.messages() if "line " in m]
    assert any("line 1:" in m for m in warnings) and any("line 3:" in m and "MD5" in m for m in warnings)
    assert store.users == {"alice"}


def test_vanished_file_keeps_the_last_good_users(htpasswd: str, logs: LogCapture) -> None:
    """The file deleted: users stay, one warning (not one a second); back again: reloaded."""
    clock = fake_clock()
    store = HtpasswdUsers.load(htpasswd, RecordingWorker(), clock.seconds)
    os.unlink(htpasswd)
    for _ in range(3):
        clock.advance(1.5)
        assert check(store, "bob", BOB_PW)
    warnings = [m for m in logs.messages() if "cannot be read" in m]
    assert len(warnings) == 1 and "keeping the 2 users" in warnings[0]
    write_file(htpasswd, f"dave:{bcrypt_hash('dave-pw')}\n")
    clock.advance(1.5)
    assert check(store, "dave", "dave-pw")
    assert not check(store, "bob", BOB_PW)


def test_unreadable_file_keeps_the_last_good_users(htpasswd: str, logs: LogCapture) -> None:
    """A path that cannot be read any more (here: a directory now) keeps the users and warns."""
    clock = fake_clock()
    store = HtpasswdUsers.load(htpasswd, RecordingWorker(), clock.seconds)
    os.unlink(htpasswd)
    os.mkdir(htpasswd)
    clock.advance(1.5)
    assert check(store, "alice", ALICE_PW)
    assert any("cannot be read" in m for m in logs.messages())
    shutil.rmtree(htpasswd)


def test_combined_users_accept_a_user_of_either_store(htpasswd: str) -> None:
    """--user and --htpasswd together: both kinds of users get in."""
    from_file = HtpasswdUsers.load(htpasswd, RecordingWorker(), fake_clock().seconds)
    store = Users((SingleUser("admin", "admin-pw"), from_file))
    assert check(store, "admin", "admin-pw")
    assert check(store, "alice", ALICE_PW)
    assert not check(store, "admin", ALICE_PW)
    assert exists(store, "admin") and exists(store, "bob") and not exists(store, "carol")


def test_nothing_secret_is_logged(htpasswd: str, logs: LogCapture) -> None:
    """Loads, reloads with bad lines, right and wrong checks: no password or hash in any log."""
    with open(htpasswd) as handle:
        hashes = [line.split(":", 1)[1].strip() for line in handle if line.strip()]
    clock = fake_clock()
    store = HtpasswdUsers.load(htpasswd, RecordingWorker(), clock.seconds)
    check(store, "alice", ALICE_PW)
    check(store, "alice", "wrong-guess-pw")
    write_file(htpasswd, f"pasted-password-line\nalice:{hashes[0]}\n", mtime_ns=5 * 10**18)
    clock.advance(2)
    check(store, "alice", ALICE_PW)
    logs.assert_absent(ALICE_PW, "wrong-guess-pw", "pasted-password-line", *hashes)


def test_a_flood_of_wrong_passwords_does_not_queue_without_bound(htpasswd: str) -> None:
    """Beyond max_pending bcrypt checks in flight, a new check fails at once instead of waiting
    behind the flood; a user whose login succeeded lately is still let in from the cache, and
    checks are taken again once the queue drains."""
    worker = ManualWorker()
    store = HtpasswdUsers.load(htpasswd, worker, fake_clock().seconds)
    store.max_pending = 3
    good = ensureDeferred(store.check("alice", ALICE_PW))
    worker.run_all()
    assert result_of(good) is True
    flood = [ensureDeferred(store.check("alice", f"wrong-{i}")) for i in range(3)]
    refused = ensureDeferred(store.check("alice", "wrong-extra"))
    assert refused.called and result_of(refused) is False
    cached = ensureDeferred(store.check("alice", ALICE_PW))
    assert cached.called and result_of(cached) is True
    assert worker.run_all() == 3
    assert [result_of(d) for d in flood] == [False, False, False]
    later = ensureDeferred(store.check("alice", "wrong-later"))
    assert not later.called
    worker.run_all()
    assert result_of(later) is False
