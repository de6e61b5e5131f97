//! The connection to gdb: a TCP stream with an output buffer (gdbstub writes a response
//! byte by byte; unbuffered, that is a system call and a TCP segment per byte), and a
//! second handle on the same socket to notice Ctrl-C while the replay runs.

use std::io::{Read, Write};
use std::net::TcpStream;

use gdbstub::conn::{Connection, ConnectionExt};

/// gdb's interrupt request (Ctrl-C).
const INTERRUPT: u8 = 0x03;

/// The stream gdbstub talks through.
pub struct BufferedTcp {
    stream: TcpStream,
    out: Vec<u8>,
}

impl BufferedTcp {
    /// Wraps `stream`.
    pub fn new(stream: TcpStream) -> Self {
        BufferedTcp { stream, out: Vec::new() }
    }

    fn flush_out(&mut self) -> std::io::Result<()> {
        if !self.out.is_empty() {
            Write::write_all(&mut self.stream, &self.out)?;
            self.out.clear();
        }
        Ok(())
    }

    /// Sends `text` to gdb's console now (an `O` packet, which gdb accepts while it waits
    /// for a stop).
    ///
    /// # Errors
    /// The socket failed.
    pub fn console(&mut self, text: &str) -> std::io::Result<()> {
        let mut payload = String::from("O");
        for b in text.bytes() {
            payload.push_str(&format!("{b:02x}"));
        }
        let sum = payload.bytes().fold(0u8, u8::wrapping_add);
        self.out.extend_from_slice(format!("${payload}#{sum:02x}").as_bytes());
        self.flush_out()
    }
}

impl Connection for BufferedTcp {
    type Error = std::io::Error;

    fn write(&mut self, byte: u8) -> Result<(), Self::Error> {
        self.out.push(byte);
        Ok(())
    }

    fn write_all(&mut self, buf: &[u8]) -> Result<(), Self::Error> {
        self.out.extend_from_slice(buf);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.flush_out()
    }

    fn on_session_start(&mut self) -> Result<(), Self::Error> {
        self.stream.set_nodelay(true)
    }
}

impl ConnectionExt for BufferedTcp {
    fn read(&mut self) -> Result<u8, Self::Error> {
        // Never wait for gdb with an answer (or an ack) still in the buffer.
        self.flush_out()?;
        let mut b = [0u8];
        self.stream.read_exact(&mut b)?;
        Ok(b[0])
    }

    fn peek(&mut self) -> Result<Option<u8>, Self::Error> {
        self.flush_out()?;
        peek(&self.stream)
    }
}

fn peek(stream: &TcpStream) -> std::io::Result<Option<u8>> {
    stream.set_nonblocking(true)?;
    let mut b = [0u8];
    let r = match stream.peek(&mut b) {
        Ok(0) => Ok(Some(0)),
        Ok(_) => Ok(Some(b[0])),
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    };
    stream.set_nonblocking(false)?;
    r
}

/// Watches the socket for gdb's Ctrl-C while the replay runs.
pub struct InterruptWatch {
    stream: TcpStream,
}

impl InterruptWatch {
    /// A second handle on `stream`.
    ///
    /// # Errors
    /// The socket could not be duplicated.
    pub fn new(stream: &TcpStream) -> std::io::Result<Self> {
        Ok(InterruptWatch { stream: stream.try_clone()? })
    }

    /// Whether gdb asked to interrupt (the request is consumed); a closed connection
    /// counts as one, so the replay stops and the session ends.
    pub fn interrupted(&mut self) -> bool {
        match peek(&self.stream) {
            Ok(Some(INTERRUPT)) => {
                let mut b = [0u8];
                let _ = self.stream.read_exact(&mut b);
                true
            }
            Ok(Some(0)) | Err(_) => true,
            Ok(_) => false,
        }
    }
}
