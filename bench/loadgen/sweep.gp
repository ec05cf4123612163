# sweep.gp: the latency-throughput curve of a lagoon-bench --sweep, as PNG and SVG.
#
#   gnuplot -e "data='sweep.dat'; out='sweep'; title='health, 50 connections'" bench/loadgen/sweep.gp
#
# data: the file lagoon-bench --sweep --out wrote (columns: offered/s achieved/s p50 p90 p99
# p99.9 max, latencies in microseconds). Writes out.png and out.svg. Latency is measured from
# each call's due time (open loop), so the knee where it climbs is the saturation point.
if (!exists("data")) data = 'sweep.dat'
if (!exists("out")) out = 'sweep'
if (!exists("title")) title = 'lagoon-bench open-loop sweep'

set title title
set xlabel 'achieved throughput (calls/s)'
set ylabel 'latency (microseconds, log scale)'
set logscale y
set format y '%.0f'
set format x '%.0s%c'
set grid xtics ytics mytics
set key top left box opaque
set yrange [10:*]
set style data linespoints

plot_it = "plot data using 2:3 title 'p50' lw 2 pt 7 ps 0.8, \
  data using 2:4 title 'p90' lw 2 pt 5 ps 0.8, \
  data using 2:5 title 'p99' lw 2 pt 9 ps 0.9, \
  data using 2:6 title 'p99.9' lw 2 pt 11 ps 0.9, \
  1000 title '1 ms' with lines dt 2 lc rgb 'gray40'"

set terminal pngcairo size 1000,620 font 'sans,11'
set output out.'.png'
eval plot_it
set terminal svg size 1000,620 dynamic font 'sans,11'
set output out.'.svg'
eval plot_it
set output
