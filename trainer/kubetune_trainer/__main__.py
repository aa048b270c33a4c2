from kubetune_trainer.cli import main

raise SystemExit(main())
