"""A target whose allocations happen in a method, to check frame names."""

import os
import time


class Shipper:
    def __init__(self):
        self.keep = []

    def buffer_line(self):
        self.keep.append(bytearray(100000))


shipper = Shipper()
print("READY %d" % os.getpid(), flush=True)
while True:
    shipper.buffer_line()
    if len(shipper.keep) > 300:
        shipper.keep.clear()
    time.sleep(0.001)
