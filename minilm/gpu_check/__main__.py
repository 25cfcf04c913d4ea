import sys

from . import module_main

sys.exit(module_main())
