# heapspy: generated from heapspy/profile.proto (heapspy's own schema for the part of the
# pprof format it uses) and committed so that installing heapspy needs no protoc.
# Regenerate from the repository root with the protoc of grpcio-tools 1.51.3 (libprotoc
# 3.21.6), then put this header back on both files:
#   python3 -m venv /tmp/protoc && /tmp/protoc/bin/pip install grpcio-tools==1.51.3
#   /tmp/protoc/bin/python -m grpc_tools.protoc -I. --python_out=. --pyi_out=. \
#       heapspy/profile.proto
# Why that old protoc: its output runs on every protobuf runtime from 3.20 to 7.x, while
# code from protoc >= 26 calls ValidateProtobufRuntimeVersion and refuses runtimes older
# than the protoc that generated it.
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Function(_message.Message):
    __slots__ = ["filename", "id", "name", "system_name"]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_NAME_FIELD_NUMBER: _ClassVar[int]
    filename: int
    id: int
    name: int
    system_name: int
    def __init__(self, id: _Optional[int] = ..., name: _Optional[int] = ..., system_name: _Optional[int] = ..., filename: _Optional[int] = ...) -> None: ...

class Label(_message.Message):
    __slots__ = ["key", "num", "num_unit", "str"]
    KEY_FIELD_NUMBER: _ClassVar[int]
    NUM_FIELD_NUMBER: _ClassVar[int]
    NUM_UNIT_FIELD_NUMBER: _ClassVar[int]
    STR_FIELD_NUMBER: _ClassVar[int]
    key: int
    num: int
    num_unit: int
    str: int
    def __init__(self, key: _Optional[int] = ..., str: _Optional[int] = ..., num: _Optional[int] = ..., num_unit: _Optional[int] = ...) -> None: ...

class Line(_message.Message):
    __slots__ = ["function_id", "line"]
    FUNCTION_ID_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    function_id: int
    line: int
    def __init__(self, function_id: _Optional[int] = ..., line: _Optional[int] = ...) -> None: ...

class Location(_message.Message):
    __slots__ = ["address", "id", "line", "mapping_id"]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LINE_FIELD_NUMBER: _ClassVar[int]
    MAPPING_ID_FIELD_NUMBER: _ClassVar[int]
    address: int
    id: int
    line: _containers.RepeatedCompositeFieldContainer[Line]
    mapping_id: int
    def __init__(self, id: _Optional[int] = ..., mapping_id: _Optional[int] = ..., address: _Optional[int] = ..., line: _Optional[_Iterable[_Union[Line, _Mapping]]] = ...) -> None: ...

class Mapping(_message.Message):
    __slots__ = ["filename", "has_filenames", "has_functions", "has_line_numbers", "id"]
    FILENAME_FIELD_NUMBER: _ClassVar[int]
    HAS_FILENAMES_FIELD_NUMBER: _ClassVar[int]
    HAS_FUNCTIONS_FIELD_NUMBER: _ClassVar[int]
    HAS_LINE_NUMBERS_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    filename: int
    has_filenames: bool
    has_functions: bool
    has_line_numbers: bool
    id: int
    def __init__(self, id: _Optional[int] = ..., filename: _Optional[int] = ..., has_functions: bool = ..., has_filenames: bool = ..., has_line_numbers: bool = ...) -> None: ...

class Profile(_message.Message):
    __slots__ = ["comment", "default_sample_type", "duration_nanos", "function", "location", "mapping", "period", "period_type", "sample", "sample_type", "string_table", "time_nanos"]
    COMMENT_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_SAMPLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    DURATION_NANOS_FIELD_NUMBER: _ClassVar[int]
    FUNCTION_FIELD_NUMBER: _ClassVar[int]
    LOCATION_FIELD_NUMBER: _ClassVar[int]
    MAPPING_FIELD_NUMBER: _ClassVar[int]
    PERIOD_FIELD_NUMBER: _ClassVar[int]
    PERIOD_TYPE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_FIELD_NUMBER: _ClassVar[int]
    SAMPLE_TYPE_FIELD_NUMBER: _ClassVar[int]
    STRING_TABLE_FIELD_NUMBER: _ClassVar[int]
    TIME_NANOS_FIELD_NUMBER: _ClassVar[int]
    comment: _containers.RepeatedScalarFieldContainer[int]
    default_sample_type: int
    duration_nanos: int
    function: _containers.RepeatedCompositeFieldContainer[Function]
    location: _containers.RepeatedCompositeFieldContainer[Location]
    mapping: _containers.RepeatedCompositeFieldContainer[Mapping]
    period: int
    period_type: ValueType
    sample: _containers.RepeatedCompositeFieldContainer[Sample]
    sample_type: _containers.RepeatedCompositeFieldContainer[ValueType]
    string_table: _containers.RepeatedScalarFieldContainer[str]
    time_nanos: int
    def __init__(self, sample_type: _Optional[_Iterable[_Union[ValueType, _Mapping]]] = ..., sample: _Optional[_Iterable[_Union[Sample, _Mapping]]] = ..., mapping: _Optional[_Iterable[_Union[Mapping, _Mapping]]] = ..., location: _Optional[_Iterable[_Union[Location, _Mapping]]] = ..., function: _Optional[_Iterable[_Union[Function, _Mapping]]] = ..., string_table: _Optional[_Iterable[str]] = ..., time_nanos: _Optional[int] = ..., duration_nanos: _Optional[int] = ..., period_type: _Optional[_Union[ValueType, _Mapping]] = ..., period: _Optional[int] = ..., comment: _Optional[_Iterable[int]] = ..., default_sample_type: _Optional[int] = ...) -> None: ...

class Sample(_message.Message):
    __slots__ = ["label", "location_id", "value"]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LOCATION_ID_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    label: _containers.RepeatedCompositeFieldContainer[Label]
    location_id: _containers.RepeatedScalarFieldContainer[int]
    value: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, location_id: _Optional[_Iterable[int]] = ..., value: _Optional[_Iterable[int]] = ..., label: _Optional[_Iterable[_Union[Label, _Mapping]]] = ...) -> None: ...

class ValueType(_message.Message):
    __slots__ = ["type", "unit"]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    type: int
    unit: int
    def __init__(self, type: _Optional[int] = ..., unit: _Optional[int] = ...) -> None: ...
