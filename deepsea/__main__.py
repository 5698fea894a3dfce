from deepsea.cli import main

main()
