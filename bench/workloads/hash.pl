# Perl workload: hash-heavy word counting, joins and sorts.
# Run by bench/run.py as `perl hash.pl ROUNDS`; deterministic.
use strict;
use warnings;

my $rounds = shift // 10;
my $check = 0;
for my $r (1 .. $rounds) {
    my %count;
    my %by_len;
    for my $i (1 .. 40000) {
        my $key = "k" . ($i * 7919 % 50021) . "_" . ($i % 13);
        $count{$key}++;
        push @{ $by_len{ length $key } }, $key;
    }
    my %inverse = map { $_ => $count{$_} } grep { $count{$_} > 0 } keys %count;
    my @top = (sort { $inverse{$b} <=> $inverse{$a} || $a cmp $b } keys %inverse)[0 .. 9];
    $check += scalar(keys %by_len) + scalar(@top) + scalar(keys %inverse);
    delete @count{ grep { /_1$/ } keys %count };
    $check += scalar keys %count;
}
print "$check\n";
