"""The LOAD_MODULE body: :class:`mitogen.core.ModuleRecord` builds and reads
it, and the bytes on the wire are those every released core understands."""

import zlib

import pytest

import mitogen.core
from mitogen.core import Blob, LOAD_MODULE, Message, ModuleRecord, StreamError

SOURCE = zlib.compress(b'x = 1\n', 6)

# (record, exact pickled body). The body is a 5-tuple whose fourth field
# tells a found module (source, then related modules) from one not served
# (None, then the reason or None). Changing these bytes breaks children
# running an older core.
WIRE = [
    (ModuleRecord.found('pkg.mod', None, 'pkg/mod.py', Blob(SOURCE),
                        ['pkg', 'pkg.other']),
     b'\x80\x02(X\x07\x00\x00\x00pkg.modq\x00NX\n\x00\x00\x00pkg/mod.pyq'
     b'\x01cmitogen.core\nBlob\nq\x02c_codecs\nencode\nq\x03X\x12\x00\x00'
     b'\x00x\xc2\x9c\xc2\xabP\xc2\xb0U0\xc3\xa4\x02\x00\x056\x011q\x04X'
     b'\x06\x00\x00\x00latin1q\x05\x86q\x06Rq\x07\x85q\x08Rq\t]q\n(X\x03'
     b'\x00\x00\x00pkgq\x0bX\t\x00\x00\x00pkg.otherq\x0cetq\r.'),
    (ModuleRecord.absent('os', 'it is in the standard library'),
     b'\x80\x02(X\x02\x00\x00\x00osq\x00NNNX\x1d\x00\x00\x00it is in the '
     b'standard libraryq\x01tq\x02.'),
    (ModuleRecord.absent('nowhere'),
     b'\x80\x02(X\x07\x00\x00\x00nowhereq\x00NNNNtq\x01.'),
]


@pytest.mark.parametrize('record,body', WIRE,
                         ids=['found', 'refused', 'not-found'])
def test_load_module_body_has_the_exact_bytes_of_the_5_tuple(record, body):
    msg = record.to_message(dst_id=7)
    assert msg.handle == LOAD_MODULE
    assert msg.dst_id == 7
    assert msg.data == body


@pytest.mark.parametrize('record,body', WIRE,
                         ids=['found', 'refused', 'not-found'])
def test_load_module_body_reads_back_field_by_field(record, body):
    read = ModuleRecord.from_message(Message(data=body, handle=LOAD_MODULE))
    for field in ModuleRecord.__slots__:
        assert getattr(read, field) == getattr(record, field), field
    assert read.is_found is (record.compressed is not None)


def test_found_package_carries_its_submodules():
    record = ModuleRecord.found('pkg', ['pkg.a'], 'pkg/__init__.py',
                                Blob(SOURCE))
    read = ModuleRecord.from_message(record.to_message())
    assert read.is_pkg and read.pkg_present == ['pkg.a']
    assert read.related == [] and read.reason is None


def test_refusal_reason_is_not_read_as_related_modules():
    read = ModuleRecord.from_message(
        ModuleRecord.absent('os', u'refused').to_message())
    assert read.reason == u'refused'
    assert read.related == []
    assert not read.is_found


@pytest.mark.parametrize('body', [
    ('m', None, None, Blob(SOURCE), 5),
    ('m', 'not a list', None, Blob(SOURCE), []),
    ('m', None, 7, Blob(SOURCE), []),
    ('m', None, None, u'text, not bytes', []),
    ('m', None, None, None),
], ids=['related-not-a-list', 'pkg-present-not-a-list', 'path-not-text',
        'source-not-bytes', 'four-fields'])
def test_malformed_load_module_body_is_refused(body):
    msg = Message.pickled(body, handle=LOAD_MODULE)
    with pytest.raises(StreamError):
        ModuleRecord.from_message(Message(data=msg.data))


def test_core_record_of_the_importer_is_what_children_receive(router):
    importer = mitogen.core.Importer(router, router.myself(),
                                     core_compressed=b'core bytes')
    try:
        assert importer.core_compressed == b'core bytes'
        assert importer.get_record('mitogen.core').is_found
        assert importer.get_record('never.asked') is None
    finally:
        router.del_handler(LOAD_MODULE)
