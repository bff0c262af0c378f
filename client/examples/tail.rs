//! Follows a channel and prints each publication with its offset, resuming after any
//! reconnect from the last offset printed.
//!
//! ```sh
//! cargo run -p shardcast-client --example tail -- ws://127.0.0.1:8080/ws 'process:build-1'
//! ```

use shardcast_client::{Client, LinkEvent, Position};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .unwrap_or_else(|| "ws://127.0.0.1:8080/ws".into());
    let channel = args.next().unwrap_or_else(|| "chat/lobby".into());
    let client = Client::builder(&url).connect()?;
    let mut link = client.link_events();
    tokio::spawn(async move {
        while let Ok(event) = link.recv().await {
            match event {
                LinkEvent::Disconnected { reason, retry_in } => {
                    eprintln!("link down ({reason}); retrying in {retry_in:?}")
                }
                LinkEvent::Resubscribed { topic, recovered } => {
                    eprintln!("{topic} back; nothing missed: {recovered:?}")
                }
                other => eprintln!("{other:?}"),
            }
        }
    });
    // Offset 0: everything the channel retains, then live.
    let from = Position {
        offset: 0,
        epoch: None,
    };
    let mut sub = client.subscribe_from(&channel, from).await?;
    while let Some(event) = sub.next().await {
        println!("{:>6} {}", event.offset.unwrap_or(0), event.data);
    }
    Ok(())
}
