import sys

from peft_core.cli import main

sys.exit(main())
