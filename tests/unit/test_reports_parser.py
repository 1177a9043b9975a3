"""The report parser on text written by hand in the library's format."""

from __future__ import annotations

from kfence_py.reports import parse_reports

RULE = "=" * 66
OOB = f"""unrelated output
{RULE}
BUG: KFENCE: out-of-bounds write in fill+0x21

Out-of-bounds write at 0x7f0000001000 (3B right of kfence-#4):
 #0 0x000055550000011eb in fill+0x21 (/tmp/prog+0x11eb)
 #1 0x0000555500001280 in <unknown> (/lib/libc.so.6+0x2724a)

kfence-#4: 0x7f0000000fc0-0x7f0000000ffd, size=62, cache=calloc

allocated by thread 17 at 0.000168s:
 #0 0x000055550000126b in main+0x12 (/tmp/prog+0x126b)

pid 17, thread 18
{RULE}
{RULE}
BUG: KFENCE: memory corruption in main+0x9d

Corrupted memory at 0x7f0000003ffd [ 0x00 . 0x41 . ] (in kfence-#3):
 #0 0x00005555000012f6 in main+0x9d (/tmp/prog+0x12f6)

kfence-#3: 0x7f0000003ff0-0x7f0000003ffc, size=13, cache=malloc

allocated by thread 17 at 0.000985s:
 #0 0x0000555500001234 in copy+0x12 (/tmp/prog+0x1234)

freed by thread 19 at 0.000992s:
 #0 0x00005555000012f6 in main+0x9d (/tmp/prog+0x12f6)
 #1 0x00005555000012f0 in start+0x9 (/tmp/prog+0x12f0)

pid 17, thread 19
{RULE}
trailing output
"""


def test_out_of_bounds_fields():
    oob, _ = parse_reports(OOB)
    assert (oob.kind, oob.access, oob.function, oob.location) == (
        "out-of-bounds", "write", "fill", "fill+0x21")
    assert oob.address == 0x7F0000001000 and oob.distance == 3 and oob.object_index == 4
    assert (oob.object_start, oob.size, oob.cache) == (0x7F0000000FC0, 62, "calloc")
    assert [f.function for f in oob.stack] == ["fill", None]
    assert oob.stack[1].module == "/lib/libc.so.6" and oob.stack[1].module_offset == 0x2724A
    assert oob.alloc_thread == 17 and [f.function for f in oob.alloc_stack] == ["main"]
    assert oob.free_thread is None and oob.free_stack == []
    assert oob.text.startswith(RULE) and oob.text.rstrip().endswith(RULE)


def test_corruption_fields():
    _, bad = parse_reports(OOB)
    assert (bad.kind, bad.access, bad.function) == ("memory corruption", None, "main")
    assert bad.corrupted == "0x00 . 0x41 ."
    assert bad.free_thread == 19 and len(bad.free_stack) == 2


def test_text_without_reports():
    assert parse_reports("nothing to see\n") == []
