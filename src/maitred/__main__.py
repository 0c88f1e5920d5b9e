from maitred.cli import main

raise SystemExit(main())
