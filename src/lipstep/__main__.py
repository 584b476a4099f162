from lipstep.cli import main

main()
