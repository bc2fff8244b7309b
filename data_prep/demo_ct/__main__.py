import sys

from data_prep.demo_ct import main

main(sys.argv[1:])
