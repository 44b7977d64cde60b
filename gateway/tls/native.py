"""The only module that touches pyOpenSSL's internals (``OpenSSL._util``), for the few
things its public API cannot do:

- set a context's key-exchange groups (``SSL_CTX_set1_groups_list``; pyOpenSSL offers only
  ``set_tmp_ecdh``, a single curve);
- install a verify callback that sets the X509 error of a certificate it refuses, so that
  OpenSSL sends the alert that says why (certificate_revoked for a revoked certificate);
  pyOpenSSL's ``set_verify`` can only answer yes or no;
- read OpenSSL's text for an X509 verification error;
- tell whether a handshake resumed a session;
- give a connection's memory BIOs back once its handshake is over (``renew_memory_bios``);
- decrypt every record a memory-BIO connection holds in one loop of ``SSL_read`` into one
  buffer (``read_records``): pyOpenSSL's ``recv`` allocates a buffer of the size asked
  for, checks three callback helpers and raises an exception to say "no more", for every
  record; a device writing one message per record pays that per message;
- read all the TLS output waiting in a connection's memory BIO in one call of its size
  (``take_output``), rather than asking until pyOpenSSL raises ``WantReadError`` (an
  exception, and a buffer of the size asked for, 256 KiB, each time).

Each falls back (with a warning, or a plain text) where the internals are not as expected.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from OpenSSL import SSL, crypto
from twisted.logger import Logger

log = Logger()

_V = SSL.X509VerificationCodes

# (connection, certificate, OpenSSL's error, depth, OpenSSL's verdict) -> 0 or the X509 error
Decide = Callable[[SSL.Connection, crypto.X509, int, int, int], int]


def set_groups(ctx: SSL.Context, groups: Sequence[str]) -> None:
    """The key-exchange groups the context offers and accepts, in preference order (OpenSSL
    names: X25519, P-256, P-384, ...). ValueError naming the groups if OpenSSL refuses them."""
    try:
        from OpenSSL._util import lib
    except ImportError:  # pragma: no cover - pyOpenSSL reorganised
        raise ValueError("this pyOpenSSL cannot set key-exchange groups") from None
    setter = getattr(lib, "SSL_CTX_set1_groups_list", None) or lib.SSL_CTX_set1_curves_list
    try:
        text = ":".join(groups).encode("ascii")
    except UnicodeEncodeError:
        raise ValueError("group names are ASCII") from None
    ok = setter(ctx._context, text)  # type: ignore[attr-defined,unused-ignore]
    if ok != 1:
        lib.ERR_clear_error()
        raise ValueError(
            f"OpenSSL refuses the group list {':'.join(groups)!r} "
            "(known names: X25519, X448, P-256, P-384, P-521, ...)"
        )


def session_reused(connection: SSL.Connection) -> bool:
    """Whether the handshake resumed a session (pyOpenSSL has no public call for it)."""
    try:
        from OpenSSL._util import lib

        return bool(lib.SSL_session_reused(connection._ssl))  # type: ignore[attr-defined,unused-ignore]
    except Exception:
        return False


def verify_error_string(error_number: int) -> str:
    """OpenSSL's text for an X509 verification error (e.g. 'certificate has expired')."""
    try:
        from OpenSSL._util import ffi, lib

        return str(ffi.string(lib.X509_verify_cert_error_string(error_number)).decode())
    except Exception:
        return f"X509 verification error {error_number}"


def install_servername_callback(ctx: SSL.Context, choose: Callable[[SSL.Connection], bool]) -> None:
    """Install ``choose`` as the context's servername (SNI) callback: False refuses the
    handshake with the unrecognized_name alert, quietly (pyOpenSSL's own wrapper can refuse
    only by an exception, which it prints to stderr). An exception is logged and refuses.
    Without the expected internals, pyOpenSSL's ``set_tlsext_servername_callback``."""
    try:
        from OpenSSL._util import ffi, lib

        reverse = SSL.Connection._reverse_mapping
        context_ptr = ctx._context  # type: ignore[attr-defined,unused-ignore]
        fatal = lib.SSL_TLSEXT_ERR_ALERT_FATAL
    except (ImportError, AttributeError):

        def fallback(connection: SSL.Connection) -> None:
            if not choose(connection):
                raise ValueError("unrecognized server name")

        ctx.set_tlsext_servername_callback(fallback)
        return

    @ffi.callback("int (*)(SSL *, int *, void *)")  # type: ignore[untyped-decorator]
    def callback(ssl: Any, alert: Any, arg: Any) -> int:
        try:
            return 0 if choose(reverse[ssl]) else fatal  # (OpenSSL's alert: unrecognized_name)
        except Exception:
            log.failure("servername callback failed; refusing the handshake")
            return fatal

    lib.SSL_CTX_set_tlsext_servername_callback(context_ptr, callback)
    ctx._mqttgw_servername_callback = callback  # type: ignore[attr-defined]  # keep it alive


def install_verify_callback(
    ctx: SSL.Context, mode: int, decide: Decide, fallback: Callable[..., bool]
) -> None:
    """Install ``decide`` as the context's verify callback; a non-zero answer becomes the
    certificate's X509 error (and so the TLS alert). Exceptions never reach OpenSSL: they
    are logged and the certificate refused. Without the expected internals, ``fallback``
    (a pyOpenSSL-style callback) is installed with ``set_verify``."""
    try:
        from OpenSSL._util import ffi, lib

        reverse = SSL.Connection._reverse_mapping
        from_raw = crypto.X509._from_raw_x509_ptr
        context_ptr = ctx._context  # type: ignore[attr-defined,unused-ignore]
    except (ImportError, AttributeError):
        log.warn("pyOpenSSL internals not as expected: revoked certificates get a generic alert")
        ctx.set_verify(mode, fallback)
        return

    @ffi.callback("int (*)(int, X509_STORE_CTX *)")  # type: ignore[untyped-decorator]
    def callback(ok: int, store_ctx: Any) -> int:
        try:
            raw = lib.X509_STORE_CTX_get_current_cert(store_ctx)
            lib.X509_up_ref(raw)
            cert = from_raw(raw)
            errno = lib.X509_STORE_CTX_get_error(store_ctx)
            depth = lib.X509_STORE_CTX_get_error_depth(store_ctx)
            ssl = lib.X509_STORE_CTX_get_ex_data(
                store_ctx, lib.SSL_get_ex_data_X509_STORE_CTX_idx()
            )
            code = decide(reverse[ssl], cert, errno, depth, ok)
        except Exception:
            log.failure("certificate verification callback failed; refusing the certificate")
            code = _V.ERR_APPLICATION_VERIFICATION
        if code:
            if ok:
                lib.X509_STORE_CTX_set_error(store_ctx, code)
            return 0
        return 1

    lib.SSL_CTX_set_verify(context_ptr, mode, callback)
    ctx._mqttgw_verify_callback = callback  # type: ignore[attr-defined]  # keep it alive


_DONE = b"SSL negotiation finished successfully"  # (OpenSSL's words for TLS_ST_OK)


def renew_memory_bios(connection: SSL.Connection) -> bool:
    """Once the handshake is over and both memory BIOs are empty: replace them with new
    ones (OpenSSL frees the old). A memory BIO keeps the largest buffer it ever held, and
    the handshake's flights (certificate chains both ways) are the largest an idle device's
    connection sees: 4-5 KiB per connection kept for nothing. True once done (False: not
    yet, or not a memory-BIO connection; nothing changed)."""
    try:
        from OpenSSL._util import ffi, lib

        into, out = connection._into_ssl, connection._from_ssl  # type: ignore[attr-defined,unused-ignore]
        ssl = connection._ssl  # type: ignore[attr-defined,unused-ignore]
        if into is None or out is None or ffi.string(lib.SSL_state_string_long(ssl)) != _DONE:
            return False
        data = ffi.new("char **")
        if lib.BIO_get_mem_data(into, data) != 0 or lib.BIO_get_mem_data(out, data) != 0:
            return False  # (bytes still to read or to send: another time)
        new_into, new_out = lib.BIO_new(lib.BIO_s_mem()), lib.BIO_new(lib.BIO_s_mem())
        if new_into == ffi.NULL or new_out == ffi.NULL:
            for bio in (new_into, new_out):
                if bio != ffi.NULL:
                    lib.BIO_free(bio)
            return False
        lib.SSL_set_bio(ssl, new_into, new_out)
        connection._into_ssl, connection._from_ssl = new_into, new_out  # type: ignore[attr-defined,unused-ignore]
        return True
    except Exception:
        return False


_out_buffer: list[Any] = [None, 0]  # a buffer TLS output is read into, and its size


def take_output(connection: SSL.Connection) -> bytes | None:
    """All the TLS output waiting in a memory-BIO connection's outgoing BIO, read in one
    ``BIO_read`` of its size into one buffer (b"": none); None where it cannot be told
    (the caller then asks pyOpenSSL's ``bio_read`` until ``WantReadError``)."""
    try:
        from OpenSSL._util import ffi, lib

        out = connection._from_ssl  # type: ignore[attr-defined,unused-ignore]
        waiting = lib.BIO_get_mem_data(out, ffi.NULL)
        if waiting <= 0:
            return b""
        if _out_buffer[1] < waiting:
            _out_buffer[:] = [ffi.new("char[]", max(waiting, 16384)), max(waiting, 16384)]
        got = lib.BIO_read(out, _out_buffer[0], waiting)
        return ffi.buffer(_out_buffer[0], got)[:] if got > 0 else b""
    except Exception:
        return None


_RECORD = 16384  # the most plaintext one TLS record carries (RFC 8446, 5.1)
_read_buffer: Any = None


def read_records(connection: SSL.Connection) -> tuple[list[bytes], bool] | None:
    """The plaintext of every record the connection's read BIO holds, and whether OpenSSL
    stopped only because it wants more input (True); False: it stopped for something else
    (the peer's close_notify, an alert, an error), which the caller asks pyOpenSSL's
    ``recv`` about (it meets the same condition and raises what it means). None where
    pyOpenSSL's internals are not as expected."""
    global _read_buffer
    try:
        from OpenSSL._util import ffi, lib

        ssl = connection._ssl  # type: ignore[attr-defined,unused-ignore]
        if _read_buffer is None:
            _read_buffer = ffi.new("char[]", _RECORD)
        buf = _read_buffer
        chunks: list[bytes] = []
        while True:
            n = lib.SSL_read(ssl, buf, _RECORD)
            if n <= 0:
                return chunks, lib.SSL_get_error(ssl, n) == lib.SSL_ERROR_WANT_READ
            chunks.append(ffi.buffer(buf, n)[:])
    except Exception:
        return None
