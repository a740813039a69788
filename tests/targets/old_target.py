# A target for Python 2.7 and 3.6/3.7, which heapspy must refuse: syntax of 2.7.
import os
import sys
import time

sys.stdout.write("READY %d\n" % os.getpid())
sys.stdout.flush()
while True:
    time.sleep(0.1)
