module meterd.invalid/meterd

go 1.19
