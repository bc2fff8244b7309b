import sys

from data_prep.demo import main

main(sys.argv[1:])
