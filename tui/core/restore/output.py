"""Reading pg_restore's output: its interleaved "pg_restore:" prefixes tidied (`tidy_line`),
the items it has done counted from its --verbose lines (`ItemProgress`), and what to do about
the errors that failed a restore (`explain_restore_errors`). Which errors are harmless is
`errors`."""

from __future__ import annotations

import re

# pg_restore's processes share one stderr, and each message is three writes: "pg_restore:", " "
# and the text with its newline. Interleaved, a line can start "pg_restore:pg_restore:  ",
# "pg_restore: pg_restore:" or " ", and the next carry no prefix at all.
_PREFIXES = r"(?:pg_restore:| )*"
_PREFIXES_RE = re.compile(r"^pg_restore:" + _PREFIXES)
_SERIAL_ITEM_RE = re.compile("^" + _PREFIXES + r"(creating|processing data for table|executing) ")
_NUMBERED_ITEM_RE = re.compile(
    "^" + _PREFIXES + r"(processing|processing missed|launching|finished) item (\d+) ")


def tidy_line(line: str) -> str:
    """`line` with a run of interleaved "pg_restore:" prefixes and spaces shown as one prefix."""
    m = _PREFIXES_RE.match(line)
    if m is None or m.group() == "pg_restore: ":
        return line
    return "pg_restore: " + line[m.end():]


class ItemProgress:
    """How many of the archive's items pg_restore has done, from its --verbose lines.

    A parallel restore names every item by its dump id: "processing item N" for those its
    leader does alone (the pre-data section, and "processing missed item N" after the parallel
    phase), "launching item N" and "finished item N" for those its workers do; the workers'
    "creating ..." lines repeat those items, so only numbered lines of the archive's own
    entries count there. A serial restore prints one "creating", "processing data for table" or
    "executing" line per item. Lines are read with or without their "pg_restore: " prefix,
    or with several (processes writing at once move prefixes and spaces between lines)."""

    def __init__(self, dump_ids: set[int]) -> None:
        self.dump_ids = dump_ids
        self.done = 0
        self.parallel = False
        self._seen: set[int] = set()

    def feed(self, line: str) -> tuple[str, int] | None:
        """Count `line`; for a parallel restore's "launching"/"finished" lines, return
        (that word, the dump id)."""
        numbered = _NUMBERED_ITEM_RE.match(line)
        if numbered:
            self.parallel = True
            word, dump_id = numbered.group(1), int(numbered.group(2))
            if word != "launching" and dump_id in self.dump_ids and dump_id not in self._seen:
                self._seen.add(dump_id)
                self.done += 1
            return (word, dump_id) if word in ("launching", "finished") else None
        if not self.parallel and _SERIAL_ITEM_RE.match(line):
            self.done = min(self.done + 1, len(self.dump_ids))
        return None


def explain_restore_errors(errors: list[str]) -> str:
    text = "\n".join(errors)
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m:
        return (f"The archive names role {m.group(1)!r}, which the target lacks (a grant to it "
                "also loses the object's other grants): create the role on the target first, "
                "or restore with --owners drop.")
    if "must be owner of" in text or "must be able to SET ROLE" in text:
        return ("The target user may not take over these objects: restore with --owners drop, "
                "or restore as the objects' owner.")
    if "lock timeout" in text:
        return ("Another session held a lock: end the application's sessions "
                "(--terminate-connections) or retry with a longer --lock-timeout.")
    if "already exists" in text or "multiple primary keys" in text:
        return ("Objects outside the archive's clean-up already exist: restore Supabase projects "
                "with --app-schemas-only, or into an empty database.")
    if "No space left on device" in text or "could not extend file" in text:
        return "The database server ran out of disk space: free space on it, then retry."
    if 'unrecognized configuration parameter "transaction_timeout"' in text:
        return "The archive came from pg_dump 17+ and the server is older: restore into 17+."
    if "permission denied" in text:
        return "The target user lacks a privilege the archive needs: restore as the owner."
    if "event trigger" in text.lower() and "superuser" in text:
        return "Event triggers need a superuser: they are filtered out for non-superusers."
    return "See the error lines above."
