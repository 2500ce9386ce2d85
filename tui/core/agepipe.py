"""The age cipher as a process of its own, so that it sits in a pipeline like gpg does:

    python -m tui.core.agepipe encrypt RECIPIENT...        # stdin -> stdout
    python -m tui.core.agepipe decrypt --identities-fd N   # the identities come through fd N

Streaming through pyrage (the age format, in Rust), a megabyte at a time. The identities are
secret: they come through a descriptor, never argv. Exit 0 when done, 1 with one line on stderr
otherwise (a wrong key, a damaged file, a closed pipe).
"""

from __future__ import annotations

import os
import sys


def main(argv: list[str]) -> int:
    import pyrage
    from pyrage import x25519

    src, dst = sys.stdin.buffer, sys.stdout.buffer
    try:
        if argv[:1] == ["encrypt"] and len(argv) > 1:
            recipients = [x25519.Recipient.from_str(r) for r in argv[1:]]
            pyrage.encrypt_io(src, dst, recipients)
        elif argv[:2] == ["decrypt", "--identities-fd"] and len(argv) == 3:
            with os.fdopen(int(argv[2]), "rb") as f:
                text = f.read().decode(errors="replace")
            identities = [x25519.Identity.from_str(line.strip()) for line in text.splitlines()
                          if line.strip().startswith("AGE-SECRET-KEY-")]
            if not identities:
                print("agepipe: no AGE-SECRET-KEY identity given", file=sys.stderr)  # noqa: T201
                return 1
            pyrage.decrypt_io(src, dst, identities)
        else:
            print("usage: agepipe encrypt RECIPIENT... | decrypt --identities-fd N",  # noqa: T201
                  file=sys.stderr)
            return 2
        dst.flush()
    except BrokenPipeError:
        # The reader stopped early (pg_restore --list has what it needs): not an error.
        with open(os.devnull, "wb") as devnull:
            os.dup2(devnull.fileno(), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 -- one line for the caller, whatever went wrong
        print(f"agepipe: {exc.__class__.__name__}: {exc}", file=sys.stderr)  # noqa: T201
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
