"""The trusted script that runs *inside* the sandbox; standalone (imports only the stdlib).

`trajdistill.verify.code` copies this file into each job as /harness/harness.py. Roles:

* `run`: execute /harness/program.py as `__main__` (stdin/stdout tests). The host compares
  the output, so nothing here has to be trusted beyond reporting syntax errors (exit 3).
* `candidate <rfd> <wfd>`: load /harness/program.py and serve calls to its functions over a
  pipe. This process is fully untrusted: the program can rewrite anything in it.
* `judge <rfd> <wfd> <resultfd> <entry_point>`: run the test code /harness/check.py in a
  *separate sandbox* (own PID namespace and uid). `check(candidate)` receives proxies; each call
  is sent to the candidate, and only plain data (None, bool, int, float, complex, str, bytes,
  list, tuple, dict, set, frozenset) comes back, rebuilt here from JSON. So the program cannot
  patch builtins, AssertionError or `==` in the judge, cannot return an object whose `__eq__`
  always says True, cannot exit "successfully" (EOF fails the test) and cannot reach the
  judge's result pipe. Only the judge writes the verdict, once, after `check` returned.
"""

import builtins
import json
import os
import sys
import traceback

SYNTAX_ERROR_EXIT = 3
MAX_FRAME = 64 << 20
PROGRAM = "/harness/program.py"
CHECK = "/harness/check.py"


# --- plain-data codec (both sides) ----------------------------------------------------------

_TAGS = ("tuple", "list", "set", "frozenset", "dict", "bytes", "complex")


def encode(x, depth=0):
    """Plain data as JSON-able tagged trees; anything else raises TypeError."""
    if depth > 200:
        raise TypeError("value nested too deeply")
    t = type(x)
    if x is None or t in (bool, int, str):
        return x
    if t is float:
        return x if x == x and x not in (float("inf"), float("-inf")) else {"float": repr(x)}
    if t in (list, tuple, set, frozenset):
        return {t.__name__: [encode(v, depth + 1) for v in x]}
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(v, depth + 1)] for k, v in x.items()]}
    if t is bytes:
        return {"bytes": x.hex()}
    if t is complex:
        return {"complex": [x.real, x.imag]}
    # Subclasses of plain types (numpy scalars, IntEnum, str subclasses) travel as their
    # plain value: their own __eq__ never reaches the judge.
    for base, conv in ((bool, bool), (int, int), (float, float), (str, str), (tuple, tuple),
                       (list, list)):
        if isinstance(x, base):
            return encode(conv(x), depth + 1)
    raise TypeError(f"unsupported type {t.__name__}")


def decode(x):
    if x is None or type(x) in (bool, int, float, str):
        return x
    if type(x) is not dict or len(x) != 1:
        raise ValueError("malformed value")
    (tag, v), = x.items()
    if tag == "float" and v in ("nan", "inf", "-inf"):
        return float(v)
    if tag in ("tuple", "list", "set", "frozenset") and type(v) is list:
        return {"tuple": tuple, "list": list, "set": set, "frozenset": frozenset}[tag](
            decode(i) for i in v)
    if tag == "dict" and type(v) is list:
        return {decode(k): decode(val) for k, val in v}
    if tag == "bytes" and type(v) is str:
        return bytes.fromhex(v)
    if tag == "complex" and type(v) is list and len(v) == 2:
        return complex(float(v[0]), float(v[1]))
    raise ValueError(f"malformed value tag {tag!r}")


# --- framing --------------------------------------------------------------------------------


class ChannelClosed(BaseException):
    """The other side went away (exited, crashed, or closed the pipe).

    A BaseException so that tests with `except Exception:` cannot swallow it; the judge also
    remembers it happened and then never reports a pass.
    """


def send(fd, message):
    data = json.dumps(message).encode()
    data = len(data).to_bytes(8, "big") + data
    try:
        while data:
            data = data[os.write(fd, data):]
    except (BrokenPipeError, OSError):
        raise ChannelClosed() from None


def recv(fd):
    size = int.from_bytes(_read_exact(fd, 8), "big")
    if size > MAX_FRAME:
        raise ValueError("message too large")
    return json.loads(_read_exact(fd, size))


def _read_exact(fd, n):
    parts, left = [], n
    while left:
        try:
            chunk = os.read(fd, min(left, 1 << 20))
        except OSError:
            chunk = b""
        if not chunk:
            raise ChannelClosed()
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _exc_text(exc, limit=500):
    return f"{type(exc).__name__}: {exc}"[:limit]


# --- role: run (stdin/stdout tests) ---------------------------------------------------------


def run_main():
    source = _read_program()
    try:
        code = compile(source, "program.py", "exec")
    except (SyntaxError, ValueError) as exc:
        sys.stderr.write(_exc_text(exc) + "\n")
        sys.exit(SYNTAX_ERROR_EXIT)
    sys.argv = ["program.py"]
    exec(code, {"__name__": "__main__", "__builtins__": builtins})


def _read_program():
    with open(PROGRAM, encoding="utf-8", errors="replace") as f:
        return f.read()


# --- role: candidate (untrusted side of function tests) -------------------------------------


def candidate_main(rfd, wfd):
    # Everything this loop needs is bound to locals before the program runs; if the program
    # breaks them anyway, the judge only sees garbage or EOF, which fails the test.
    _send, _recv, _encode, _decode, _text = send, recv, encode, decode, _exc_text
    try:
        code = compile(_read_program(), "program.py", "exec")
    except (SyntaxError, ValueError, MemoryError, RecursionError) as exc:
        _send(wfd, {"kind": "syntax_error", "detail": _text(exc)})
        return
    # Not "__main__": HumanEval-style programs keep demos and input() under a main guard.
    namespace = {"__name__": "__candidate__", "__builtins__": builtins}
    try:
        exec(code, namespace)
    except BaseException as exc:  # noqa: BLE001 - any failure of the program is reported
        _send(wfd, {"kind": "load_error", "type": type(exc).__name__, "detail": _text(exc),
                    "trace": traceback.format_exc()[-1500:]})
        return
    names = [n for n, v in list(namespace.items()) if not n.startswith("__") and callable(v)]
    _send(wfd, {"kind": "ready", "names": names})
    while True:
        try:
            request = _recv(rfd)
        except ChannelClosed:
            return
        func = namespace.get(request["call"])
        try:
            args = list(_decode(request["args"]))
            kwargs = _decode(request["kwargs"])
            result = func(*args, **kwargs)
        except BaseException as exc:  # noqa: BLE001
            _send(wfd, {"raise": type(exc).__name__, "detail": str(exc)[:2000]})
            continue
        try:
            value = _encode(result)
        except (TypeError, RecursionError, ValueError) as exc:
            _send(wfd, {"unsupported": f"returned {type(result).__name__}: {exc}"})
            continue
        try:  # lets the judge see in-place changes to list/dict/set arguments
            after = _encode(args)
        except (TypeError, RecursionError, ValueError):
            after = None
        _send(wfd, {"value": value, "args": after})


# --- role: judge (trusted side of function tests) -------------------------------------------


class RemoteError(Exception):
    """Raised in the judge when the program raised, or returned something untransferable."""


class UntransferableArgument(BaseException):
    """The test passed the program something that cannot cross the pipe (a sandbox limit)."""


class Judge:
    def __init__(self, rfd, wfd):
        self.rfd, self.wfd = rfd, wfd
        self.calls = 0
        self.broken = ""  # set once the channel failed: no pass can follow
        self.last_call = ""
        self.remote_exceptions = []  # exceptions that came from the program, by identity

    def proxy(self, name):
        judge = self

        def remote(*args, **kwargs):
            return judge.call(name, args, kwargs)

        remote.__name__ = remote.__qualname__ = name
        return remote

    def call(self, name, args, kwargs):
        try:
            request = {"call": name, "args": encode(list(args)), "kwargs": encode(kwargs)}
        except (TypeError, RecursionError) as exc:
            raise UntransferableArgument(f"argument of {name}(): {exc}") from None
        self.calls += 1
        try:
            send(self.wfd, request)
            reply = recv(self.rfd)
            if type(reply) is not dict:
                raise ValueError("malformed reply")
        except BaseException as exc:
            self.broken = self.broken or _exc_text(exc)
            raise
        shown = ", ".join(_short(a) for a in args)
        if "raise" in reply:
            exc = _builtin_exception(reply.get("raise"), reply.get("detail", ""))
            self.remote_exceptions.append(exc)
            self.last_call = f"{name}({shown}) raised {_exc_text(exc, 300)}"
            raise exc
        if "unsupported" in reply:
            exc = RemoteError(f"{name}({shown}) {reply['unsupported']}"[:500])
            self.remote_exceptions.append(exc)
            self.last_call = str(exc)
            raise exc
        try:
            value = decode(reply.get("value"))
            if reply.get("args") is not None:
                _sync_arguments(args, decode(reply["args"]))
        except BaseException as exc:
            self.broken = self.broken or _exc_text(exc)
            raise
        self.last_call = f"{name}({shown}) returned {_short(value)}"
        return value


def _short(x, limit=120):
    text = repr(x)
    return text if len(text) <= limit else text[:limit] + "..."


def _builtin_exception(type_name, detail):
    cls = getattr(builtins, str(type_name), None)
    # Only ordinary exceptions are rebuilt: the program must not make the judge see
    # SystemExit, KeyboardInterrupt or GeneratorExit.
    if isinstance(cls, type) and issubclass(cls, Exception) and cls is not StopIteration:
        try:
            return cls(detail)
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs 5 arguments
            pass
    return RemoteError(f"{type_name}: {detail}")


def _sync_arguments(args, after):
    for before, now in zip(args, after):
        if type(before) is list and type(now) is list:
            before[:] = now
        elif type(before) is dict and type(now) is dict:
            before.clear()
            before.update(now)
        elif type(before) is set and type(now) is set:
            before.clear()
            before.update(now)


def judge_main(rfd, wfd, result_fd, entry_point):
    verdict = _judge(Judge(rfd, wfd), entry_point)
    data = json.dumps(verdict).encode()
    while data:
        data = data[os.write(result_fd, data):]
    os.close(result_fd)


def _judge(judge, entry_point):
    try:
        hello = recv(judge.rfd)
        if type(hello) is not dict:
            raise ValueError("malformed greeting")
    except ChannelClosed:
        return {"status": "runtime_error", "detail": "program exited before the tests started"}
    except (ValueError, RecursionError, MemoryError) as exc:
        return {"status": "runtime_error", "detail": f"program garbled the channel: {exc}"[:300]}
    if hello.get("kind") == "syntax_error":
        return {"status": "syntax_error", "detail": str(hello.get("detail"))}
    if hello.get("kind") == "load_error":
        status = "memory" if hello.get("type") == "MemoryError" else "runtime_error"
        return {"status": status, "detail": f"while loading: {hello.get('detail')}"}
    names = [n for n in hello.get("names", []) if isinstance(n, str) and n.isidentifier()]
    if entry_point not in names:
        return {"status": "failed", "detail": f"function {entry_point!r} is not defined"}
    test_globals = {"__name__": "__check__", "__builtins__": builtins}
    for name in names:  # helpers the tests may call (e.g. HumanEval's encode_cyclic)
        if not hasattr(builtins, name):
            test_globals[name] = judge.proxy(name)
    with open(CHECK, encoding="utf-8") as f:
        check_source = f.read()
    try:
        exec(compile(check_source, "check.py", "exec"), test_globals)
        check = test_globals["check"]
    except BaseException as exc:  # noqa: BLE001 - the tests themselves are broken
        return {"status": "sandbox_error", "detail": f"test code failed to load: {_exc_text(exc)}"}
    try:
        check(judge.proxy(entry_point))
    except ChannelClosed:
        return {"status": "runtime_error", "detail": "program exited during the tests"}
    except UntransferableArgument as exc:
        return {"status": "sandbox_error", "detail": str(exc)}
    except BaseException as exc:  # noqa: BLE001
        return _classify_failure(judge, exc, check_source)
    if judge.broken:  # the tests swallowed a dead or garbled channel
        return {"status": "runtime_error", "detail": f"program stopped answering ({judge.broken})"}
    if judge.calls == 0:
        return {"status": "sandbox_error", "detail": "the tests never called the program"}
    return {"status": "passed", "detail": f"{judge.calls} calls checked"}


def _classify_failure(judge, exc, check_source):
    where = _failing_line(exc, check_source)
    if any(exc is e for e in judge.remote_exceptions):
        status = "memory" if isinstance(exc, MemoryError) else "runtime_error"
        detail = judge.last_call or _exc_text(exc)
        return {"status": status, "detail": f"{where}: {detail}" if where else detail}
    text = where or _exc_text(exc)
    if not isinstance(exc, AssertionError):
        text = f"{text} ({_exc_text(exc, 200)})"
    if judge.last_call:
        text += f" [last call: {judge.last_call}]"
    return {"status": "failed", "detail": text}


def _failing_line(exc, check_source):
    lines = check_source.splitlines()
    frames = [f for f in traceback.extract_tb(exc.__traceback__) if f.filename == "check.py"]
    if not frames or not frames[-1].lineno or frames[-1].lineno > len(lines):
        return ""
    return f"line {frames[-1].lineno}: {lines[frames[-1].lineno - 1].strip()[:300]}"


def main(argv):
    try:  # started with -S: add the host's site-packages without running its .pth hooks
        with open("/harness/site.json", encoding="utf-8") as f:
            sys.path.extend(p for p in json.load(f) if isinstance(p, str))
    except (OSError, ValueError):
        pass
    role = argv[1]
    if role == "run":
        run_main()
    elif role == "candidate":
        candidate_main(int(argv[2]), int(argv[3]))
    elif role == "judge":
        judge_main(int(argv[2]), int(argv[3]), int(argv[4]), argv[5])
    else:
        raise SystemExit(f"unknown role {role!r}")


if __name__ == "__main__":
    main(sys.argv)
