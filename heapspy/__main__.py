from heapspy.cli.main import run

run()
