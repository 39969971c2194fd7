from medrobust.cli import main

main()
