from seemrl.cli import main

main()
