"""``python -m gateway.hypercorn_ext``: what differs from ``fence.VERIFIED`` for the installed
libraries, then the table's entries for them (to paste into fence.py once re-verified)."""

from gateway.hypercorn_ext import fence, parts

if __name__ == "__main__":
    for name, found in parts.verify().items():
        print(f"# {name}: {'; '.join(found) if found else 'matches'}")
    print(fence.table(parts.all_targets(), parts.installed_hashes(), parts.versions()))
