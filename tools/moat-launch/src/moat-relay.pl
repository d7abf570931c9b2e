# moat-relay: the only way out of an image build. It runs in a container with no network but
# loopback (network mode none, no capabilities, the host user's ids); every build step shares
# its namespace, so 127.0.0.1:3128 here is all a step can reach. Each connection is carried
# over the unix socket the launcher listens on (bind-mounted at /run/moat-relay), which leads
# to the run's proxy and nowhere else.
use strict;
use warnings;
use Socket;
use IO::Socket::INET;
use IO::Socket::UNIX;
use IO::Select;

$SIG{CHLD} = 'IGNORE';
$| = 1;
my $l = IO::Socket::INET->new(
    LocalAddr => '127.0.0.1',
    LocalPort => 3128,
    Listen    => 128,
    ReuseAddr => 1,
) or die "moat-relay: cannot listen on 127.0.0.1:3128: $!\n";
print "moat-relay: listening\n";
while (1) {
    my $c = $l->accept or next;
    my $pid = fork;
    if (!defined $pid || $pid) {
        close $c;
        next;
    }
    close $l;
    my $u = IO::Socket::UNIX->new(Type => SOCK_STREAM, Peer => '/run/moat-relay/proxy.sock')
      or exit 1;
    my %to = ("$c" => $u, "$u" => $c);
    my $sel = IO::Select->new($c, $u);
    while ($sel->count) {
        for my $fh ($sel->can_read) {
            my $n = sysread $fh, my $buf, 65536;
            if (!$n) {
                # End of one direction: pass the half-close on, keep the other going.
                shutdown $to{"$fh"}, 1;
                $sel->remove($fh);
                next;
            }
            my $off = 0;
            while ($off < $n) {
                my $w = syswrite $to{"$fh"}, $buf, $n - $off, $off;
                exit 0 unless defined $w;
                $off += $w;
            }
        }
    }
    exit 0;
}
