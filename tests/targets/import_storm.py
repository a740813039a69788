"""A target that is importing almost all the time, like a framework starting up, forever.

Usage: import_storm.py
Rounds of imports of a good part of the standard library (asyncio, email, http, xml,
sqlite3, decimal, typing, dataclasses, json, ctypes, pickle...), each round after
dropping the pure-Python modules of those packages from sys.modules so that they are
imported afresh, with a few milliseconds' pause between rounds. Every round checks that
what it imported is whole (a name from each module); a half-initialised module kills the
target with an AttributeError, as it would kill a real one. Prints "READY <pid>" after
the first round; SIGUSR1 prints "ROUNDS <n> VIOLATIONS <names>" (modules imported by a
thread other than the main one without the global import lock held, seen by an audit
hook). Written for Python 3.8+.
"""

import _imp
import _thread
import os
import random
import signal
import sys
import time

MAIN = _thread.get_ident()
PACKAGES = (
    "asyncio", "email", "http", "xml", "sqlite3", "decimal", "_pydecimal", "typing",
    "dataclasses", "json", "urllib", "html", "tracemalloc", "pickle", "fnmatch", "glob",
    "ctypes", "logging", "concurrent", "contextvars", "statistics", "fractions",
)  # fmt: skip
violations = []
rounds = [0]


def audit(event, args):
    if event == "import" and _thread.get_ident() != MAIN and not _imp.lock_held():
        violations.append(str(args[0]))


def report(_sig, _frame):
    print("ROUNDS %d VIOLATIONS %s" % (rounds[0], ",".join(violations)), flush=True)


def drop():
    for name in list(sys.modules):
        module = sys.modules.get(name)
        origin = getattr(getattr(module, "__spec__", None), "origin", None) or ""
        if name.split(".")[0] in PACKAGES and origin.endswith(".py"):
            del sys.modules[name]


def one_round():
    import asyncio
    import ctypes
    import dataclasses
    import decimal
    import email.message
    import email.parser
    import fnmatch
    import fractions
    import glob
    import http.client
    import http.server
    import json
    import logging.handlers
    import pickle
    import sqlite3
    import statistics
    import tracemalloc
    import typing
    import urllib.request
    import xml.dom.minidom
    import xml.etree.ElementTree

    whole = (
        asyncio.run, asyncio.graph if sys.version_info >= (3, 14) else None, ctypes.CDLL,
        dataclasses.dataclass, decimal.Decimal, email.message.Message, email.parser.Parser,
        fnmatch.fnmatch, fractions.Fraction, glob.glob, http.client.HTTPConnection,
        http.server.HTTPServer, json.dumps, logging.handlers.RotatingFileHandler,
        pickle.dumps, sqlite3.connect, statistics.mean, tracemalloc.start, typing.ClassVar,
        urllib.request.urlopen, xml.dom.minidom.parseString, xml.etree.ElementTree.fromstring,
    )  # fmt: skip
    del whole
    rounds[0] += 1


sys.addaudithook(audit)
signal.signal(signal.SIGUSR1, report)
one_round()
print("READY %d" % os.getpid(), flush=True)
while True:
    drop()
    one_round()
    time.sleep(random.uniform(0.002, 0.02))
